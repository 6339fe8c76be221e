import ControlProtocol
import HostTracing
/// Turns the model and UI state into a screen. Pure: the same inputs give the same cells.
public struct Renderer {
    public static let minWidth = 60
    public static let minHeight = 16

    public var ascii = false
    public var nowNs: UInt64 = 0

    public init(ascii: Bool = false, nowNs: UInt64 = 0) {
        self.ascii = ascii
        self.nowNs = nowNs
    }

    /// Where each pane goes for a screen of this size.
    /// Below this many columns the views are tabs, one at a time (four 38-column panes cut words, the legend and
    /// the exit counts at 80).
    public static let tabsBelow = 100

    public static func tabbed(width: Int) -> Bool { width < tabsBelow }

    public static func layout(width: Int, height: Int, ui: InspectorUI, storyRows: Int = 0) -> [Pane: Rect] {
        let body = Rect(x: 0, y: 1, width: width, height: height - 2 - storyRows)
        if tabbed(width: width) && !ui.maximized {
            // The tab strip on the first body line, the focused view below it.
            return [ui.focus: Rect(x: 0, y: body.y + 1, width: width, height: body.height - 1)]
        }
        if ui.maximized { return [ui.focus: body] }
        let leftW = body.width / 2, topH = body.height / 2
        return [
            .map: Rect(x: 0, y: body.y, width: leftW, height: topH),
            .faults: Rect(x: leftW, y: body.y, width: body.width - leftW, height: topH),
            .memslots: Rect(x: 0, y: body.y + topH, width: leftW, height: body.height - topH),
            .vcpus: Rect(x: leftW, y: body.y + topH, width: body.width - leftW, height: body.height - topH),
        ]
    }

    /// Above the bottom line: a tour's words (`demo --story`, up to four rows), then the story of the last
    /// conversion (`Story`, up to two).
    public static func footerLines(_ m: InspectorModel, _ ui: InspectorUI, width: Int) -> [(text: String, role: Role)] {
        var out: [(text: String, role: Role)] = []
        if let n = ui.narration { out += wrapped(n, width).prefix(4).map { ($0, Role.warning) } }
        if let story = m.story {
            let stoppedStates: Set<Open<VCPURunState>> = [.known(.paused), .known(.faultStopped)]
            let stopped = Set(m.vcpus.filter { stoppedStates.contains($0.state) }.map(\.index))
            var text = story.text(stopped: stopped)
            // Nothing touched the range because nothing runs: say so, or "no access yet" looks like a hang.
            if story.faults == 0, !m.vcpus.isEmpty, stopped.count == m.vcpus.count {
                text += " (every vCPU is stopped: P on one resumes it)"
            }
            out += wrapped(text, width).prefix(3).map { ($0, Role.highlight) }
        }
        return out
    }

    /// The map's grid (columns, rows) in a pane: its inner area less the legend and cursor lines, and the heat
    /// map's note above the grid.
    public static func mapGrid(_ r: Rect, noteLines: Int = 0) -> (columns: Int, rows: Int) {
        (max(1, r.inner.width), max(1, r.inner.height - 2 - noteLines))
    }

    /// A heat map's note, wrapped to the pane's inner `width` (at most 2 lines; none when the map has attributes).
    /// A map whose runs the model had to repair says so there instead.
    public static func heatNote(_ m: InspectorModel, width: Int) -> [String] {
        if let t = m.tracedMap {
            let known = t.complete ? "traced from before the VM: every page known" : "unknown pages: not converted since the trace began"
            let refused = t.refused == 0 ? "" : ", \(t.refused) refused" + (t.lastRefusal.map { " (last: \($0))" } ?? "")
            return Array(wrapped("private/shared from KVM's tracepoints (kvm_vm_set_mem_attributes, applied once its ioctl returned 0) · \(known) · \(t.applied) conversions\(refused)", width).prefix(2))
        }
        guard let note = m.heatMapNote else {
            return m.runsRepaired.map { Array(wrapped($0, width).prefix(2)) } ?? []
        }
        return Array(wrapped("heat map of KVM's traced accesses · " + note, width).prefix(2))
    }

    public func render(_ m: InspectorModel, _ ui: InspectorUI, width: Int, height: Int) -> Screen {
        var s = Screen(width: width, height: height)
        guard width >= Self.minWidth && height >= Self.minHeight else {
            let lines = ["window too small", "vmscope needs \(Self.minWidth)×\(Self.minHeight)", "this one is \(width)×\(height)"]
            for (i, l) in lines.enumerated() {
                s.put(l, x: max(0, (width - l.count) / 2), y: max(0, height / 2 - 1) + i, role: i == 0 ? .warning : .normal)
            }
            return s
        }
        statusBar(&s, m, ui)
        if Self.tabbed(width: width) && !ui.maximized { tabStrip(&s, ui) }
        let footer = Self.footerLines(m, ui, width: width)
        for (i, line) in footer.enumerated() { s.put(line.text, x: 0, y: height - 1 - footer.count + i, role: line.role, limit: width) }
        for (pane, rect) in Self.layout(width: width, height: height, ui: ui, storyRows: footer.count) {
            s.box(rect, title: pane.title, focused: pane == ui.focus, ascii: ascii)
            if let why = m.unavailable[pane] {
                // Say what the peer does not offer, instead of an empty pane.
                for (i, line) in wrap(why, rect.inner.width).prefix(rect.inner.height).enumerated() {
                    s.put(line, x: rect.inner.x, y: rect.inner.y + i, role: .warning, limit: rect.inner.width)
                }
                continue
            }
            switch pane {
            case .map: mapPane(&s, rect.inner, m, ui)
            case .faults: faultsPane(&s, rect.inner, m, ui)
            case .memslots: memslotsPane(&s, rect.inner, m, ui)
            case .vcpus: vcpusPane(&s, rect.inner, m, ui)
            }
        }
        bottomLine(&s, m, ui)
        if let o = ui.overlay { overlay(&s, o, m, ui) }
        // --ascii means ASCII in every cell: separators, dots, arrows and glyphs a pane wrote too (it still drew
        // │ and · in the status bar and the fault details).
        if ascii { s.toASCII() }
        return s
    }

    // MARK: Bars

    func statusBar(_ s: inout Screen, _ m: InspectorModel, _ ui: InspectorUI) {
        s.fill(Rect(x: 0, y: 0, width: s.width, height: 1), role: .statusBar)
        let conn: String
        switch m.connection {
        case .connected(let peer): conn = s.width >= 140 ? "connected (\(peer))" : "connected"
        case .disconnected(let why): conn = ui.replay == nil ? "disconnected — retrying: \(why)" : "disconnected: \(why)"
        }
        let dropped = m.faultsDropped + m.eventsDropped
        // Most important first; what does not fit is left off the end.
        var parts: [String]
        if let qemu = m.vm.qemuVersion {
            // A stock QEMU: its version, accelerator and run state; it has no attribute engine nor fault stream.
            let machine = [m.vm.machine, m.vm.arch, m.vm.pid.map { "pid \($0)" }].compactMap { $0 }.joined(separator: " ")
            let poll = m.vm.pollIntervalNs.map { "polled every \(String(format: "%.1f", Double($0) / 1e9)) s" } ?? ""
            parts = [m.vm.name, "\(qemu) \(m.vm.accelerator ?? "?")", "status \(m.vm.runState ?? "?")", conn, machine, poll, "\(m.eventRate) ev/s"]
                .filter { !$0.isEmpty }
            // A libvirt domain: libvirt's own state and reason beside QEMU's.
            if let state = m.vm.libvirtState { parts.insert("libvirt \(state)", at: 3) }
        } else {
            parts = [m.vm.name, "engine \(m.vm.engine)", "policy \(m.vm.policy)", conn, "dropped \(dropped)",
                     "faults \(m.faultsReceived)", "\(m.eventRate) ev/s"]
        }
        if ui.replay == nil && (ui.readOnly || !m.vm.mutationsAllowed) {
            parts.insert(ui.readOnly ? "READ-ONLY" : "no mutations", at: 3)
        }
        if let alarm = m.mapAlarm { parts.insert(alarm, at: min(parts.count, 4)) }
        if let r = ui.replay {
            // The timeline first: where in the recording these views are.
            parts.insert(Self.timeline(r), at: 0)
        }
        if let rec = ui.recording {
            let secs = (nowNs &- rec.startedNs) / 1_000_000_000
            parts.insert("● REC \(secs / 60):\(secs % 60 < 10 ? "0" : "")\(secs % 60) \(rec.file.split(separator: "/").last.map(String.init) ?? rec.file)", at: 0)
        }
        // A rate from before the connection broke is not the VM's: it goes while disconnected.
        if case .disconnected = m.connection { parts.removeAll { $0.hasSuffix(" ev/s") } }
        // Connection state, policy and mode are never left off: one that does not fit whole is cut to the width.
        let essential: Set<String> = [conn, "policy \(m.vm.policy)", "READ-ONLY", "no mutations", m.mapAlarm ?? conn]
        var line = " vmscope"
        for p in parts {
            if line.count + 3 + p.count <= s.width {
                line += " │ " + p
            } else if essential.contains(p) {
                let room = s.width - line.count - 3
                if room >= 6 { line += " │ " + p.prefix(room - 1) + "…" }
                break
            }
        }
        s.put(line, x: 0, y: 0, role: .statusBar)
        if case .disconnected = m.connection, let r = line.range(of: "disconnected") {
            let start = line.distance(from: line.startIndex, to: r.lowerBound)
            s.put(String(line[r.lowerBound...].prefix { $0 != "│" }), x: start, y: 0, role: .statusError)
        }
        if let alarm = m.mapAlarm, let r = line.range(of: String(alarm.prefix(13))) {
            let start = line.distance(from: line.startIndex, to: r.lowerBound)
            s.put(String(line[r.lowerBound...].prefix { $0 != "│" }), x: start, y: 0, role: .statusError)
        }
        if dropped > 0, let r = line.range(of: "dropped \(dropped)") {
            s.put("dropped \(dropped)", x: line.distance(from: line.startIndex, to: r.lowerBound), y: 0, role: .warning)
        }
    }

    /// "REPLAY ▶ 0:12.345 / 0:30.000 ×1" (‖ when paused).
    public static func timeline(_ r: ReplayStatus) -> String {
        let speed = r.speed == r.speed.rounded() ? String(Int(r.speed)) : String(r.speed)
        return "REPLAY \(r.paused ? "‖" : "▶") \(Fmt.duration(r.positionNs)) / \(Fmt.duration(r.durationNs)) ×\(speed)"
    }

    func bottomLine(_ s: inout Screen, _ m: InspectorModel, _ ui: InspectorUI) {
        let y = s.height - 1
        if let p = ui.prompt {
            s.put("\(p.kind)\(p.text)█", x: 0, y: y, role: .highlight)
        } else if let st = ui.status {
            s.put(st.text, x: 0, y: y, role: st.isError ? .statusError : .statusOK)
        } else if ui.replay != nil {
            s.put("Space play/pause  [ ] -/+10 s  { } fault bursts  ? help  Tab views  hjkl move  S snapshot  q quit   (replay)",
                  x: 0, y: y, role: .dim)
        } else if m.peerIsQEMU && !ui.readOnly {
            // What does something on a stock QEMU (the rest is refused with the reason).
            s.put("? help  Tab views  jk move  P stop/cont VM  i n NMI  x hexdump  o sort  S snapshot  t theme  q quit   (QEMU)",
                  x: 0, y: y, role: .dim)
        } else if ui.readOnly {
            s.put("? help  Tab views  hjkl move  +/- zoom  f freeze  / filter  : cmd  x hexdump  q quit   (read-only)",
                  x: 0, y: y, role: .dim)
        } else {
            s.put("? help  Tab views  hjkl move  +/- zoom  v select  s/p convert  i inject  f freeze  / filter  : cmd  q quit",
                  x: 0, y: y, role: .dim)
        }
    }

    // MARK: GFN map

    func mapPane(_ s: inout Screen, _ r: Rect, _ m: InspectorModel, _ ui: InspectorUI) {
        let note = Self.heatNote(m, width: r.width)
        for (i, line) in note.enumerated() { s.put(line, x: r.x, y: r.y + i, role: .dim, limit: r.width) }
        let (cols, rows) = Self.mapGrid(Rect(x: r.x - 1, y: r.y - 1, width: r.width + 2, height: r.height + 2), noteLines: note.count)
        let r = Rect(x: r.x, y: r.y + note.count, width: r.width, height: r.height - note.count)
        let total = m.mapPages
        let span = ui.pagesPerCell ?? MapGeometry.fitting(totalPages: total, columns: cols, rows: rows)
        let g = MapGeometry(pagesPerCell: span, firstCell: ui.pagesPerCell == nil ? 0 : ui.firstCell, columns: cols, rows: rows)
        let heatOnly = m.heatMapNote != nil
        let backed = heatOnly ? Self.mappedPages(m.memslots) : m.tracedMap?.unknown ?? []
        let cells = GFNMap.cells(runs: m.runs, totalPages: total, geometry: g, recentFaults: m.recentFaults, nowNs: nowNs, backed: backed)
        let cursorCell = ui.cursorGFN / span
        let anchor = ui.selectionAnchor
        for (i, c) in cells.enumerated() {
            var (ch, role) = GFNMap.glyph(c, ascii: ascii)
            let cellIndex = g.firstCell + UInt64(i)
            let cellEnd = c.firstGFN + span - 1
            if let sel = ui.selection, c.firstGFN <= sel.upperBound && cellEnd >= sel.lowerBound, !c.outside { role = .selection }
            if let a = anchor, !c.outside {
                let lo = min(a, ui.cursorGFN), hi = max(a, ui.cursorGFN)
                if c.firstGFN <= hi && cellEnd >= lo { role = .selection }
            }
            if cellIndex == cursorCell && ui.focus == .map { role = .cursor; if ch == " " { ch = ascii ? "@" : "▒" } }
            s[r.x + i % cols, r.y + i / cols] = Cell(ch, role)
        }
        // Cursor line and legend.
        let gpa = ui.cursorGFN * 4096
        let cursorLine: String
        if heatOnly {
            let gfn = ui.cursorGFN
            let mapped = backed.contains { $0.contains(gfn) } ? "KVM-mapped RAM, attribute not reported" : "not KVM-mapped (device or hole)"
            let last = m.recentFaults.lastMark(inCell: gfn / span, pagesPerCell: span)
                .map { "traced \((nowNs >= $0 ? nowNs - $0 : 0) / 1_000_000) ms ago" } ?? "no traced access"
            cursorLine = "\(Fmt.hex(gpa)) gfn \(gfn) \(mapped) · cell \(last) · \(Fmt.size(span * 4096))/cell"
        } else {
            let attr = m.attribute(at: gpa).map { Self.attributeName($0) }
                ?? (m.tracedMap != nil ? "unknown (no conversion traced)" : "outside RAM")
            let slot = m.memslot(containing: gpa).map { "slot \($0.slot)" } ?? "no slot"
            cursorLine = "\(Fmt.hex(gpa)) gfn \(ui.cursorGFN) \(attr) \(slot) · \(Fmt.size(span * 4096))/cell"
        }
        s.put(cursorLine, x: r.x, y: r.y + rows, role: .highlight, limit: r.width)
        let legend: [(String, Role)] = heatOnly
            ? (ascii ? [(": KVM-mapped RAM ", .dim), ("! traced in the last 3 s ", .faulted), ("sel ", .selection)]
                     : [("· KVM-mapped RAM ", .dim), ("█▓ traced in the last 3 s ", .faulted), ("▒ selected", .selection)])
            : ascii
            ? [("# private ", .privatePage), (". shared ", .sharedPage), ("+- mixed ", .mixed)] + (m.tracedMap != nil ? [(": unknown ", .dim)] : [])
                + [("! faulted ", .faulted), ("sel ", .selection)]
            : [("█ private ", .privatePage), ("░ shared ", .sharedPage), ("▓▒ mixed ", .mixed)] + (m.tracedMap != nil ? [("· unknown ", .dim)] : [])
                + [("█ faulted ", .faulted), ("▒ selected", .selection)]
        var x = r.x
        for (text, role) in legend {
            s.put(text, x: x, y: r.y + rows + 1, role: role, limit: r.x + r.width - x)
            x += text.count
        }
    }

    /// The page ranges memslots map, sorted and merged (a heat map's RAM).
    static func mappedPages(_ slots: [MemslotRow]) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for r in slots.map({ ($0.memslot.gpa / 4096)..<($0.memslot.gpa.saturatingAdd($0.memslot.size) / 4096) }).sorted(by: { $0.lowerBound < $1.lowerBound })
        where !r.isEmpty {
            if let last = out.last, r.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                out.append(r)
            }
        }
        return out
    }

    // MARK: Faults

    /// One row of the fault list; `alias` is the VM's shared-alias mask: the gfn shown is the RAM page, an access
    /// through the alias marked `a`.
    /// The guest's counters the vCPU view shows.
    static let guestShown: Set<String> = Set([GuestCounter.heartbeat, .integrityErrors, .mceSeen, .nmiSeen].map(\.rawValue))

    /// "private" or "shared".
    static func attributeName(_ isPrivate: Bool) -> String { (isPrivate ? PageAttribute.private : .shared).rawValue }

    /// Whether the record says which attribute the access wanted: kvm_mmio (a traced MMIO row) does not, so
    /// nothing is shown there rather than a guess.
    static func statesWanted(_ f: FaultRecord) -> Bool { !(f.source == .trace && f.exit == .mmio) }

    public static func faultLine(_ f: FaultRecord, baseNs: UInt64, width: Int = 200, alias: UInt64 = 0,
                                 conversion: [ConversionStep: UInt64]? = nil) -> String {
        let vcpu = "v\(f.vcpu.map(String.init) ?? "-")"
        let wants = !statesWanted(f) ? "-   " : f.isPrivate ? "priv" : "shrd"
        if width < 70 {
            return "\(Fmt.padLeft(String(f.seq), 6)) \(vcpu) \(Fmt.hex(f.gpa, width: 8)) \(Fmt.pad(f.access.rawValue, 5)) \(wants) \(f.action)"
        }
        // A kernel record always comes from KVM_EXIT_MEMORY_FAULT: "kernel" says it in a row that must fit.
        let origin = (f.source == .kernel && f.exit == .memoryFault ? f.source.rawValue : "\(f.source)/\(f.exit)")
            + (f.tracedNs != nil ? "+trace" : "")
        let t = Double(f.timeNs &- baseNs) / 1e9
        let time = t >= 0 && t < 1e6 ? String(Int(t * 1000)) : "-"
        return "\(Fmt.padLeft(String(f.seq), 7)) \(Fmt.padLeft(time, 8))ms \(vcpu) "
            + "\(Fmt.hex(f.gpa, width: 8)) gfn \(Fmt.pad(String((f.gpa & ~alias) / 4096) + (f.gpa & alias != 0 ? "a" : ""), 7)) \(Fmt.pad(Fmt.size(f.size), 3)) "
            + "\(Fmt.pad(f.access == .unknown ? "-" : f.access.rawValue, 5)) \(wants) \(origin) \(f.action)"
            + (conversion.map { " conv \(Self.micros($0.values.reduce(0, &+)))" } ?? "") + " flags \(Fmt.hex(f.flags))"
    }

    /// The faults list's column headings, over `faultLine`'s columns (t ms: milliseconds after the oldest record
    /// kept; want: the view the access wanted).
    public static func faultColumns(width: Int) -> String {
        if width < 70 { return "\(Fmt.padLeft("seq", 6)) vc \(Fmt.pad("gpa", 10)) acc   want action" }
        return "\(Fmt.padLeft("seq", 7)) \(Fmt.padLeft("t ms", 10)) vc \(Fmt.pad("gpa", 10)) \(Fmt.pad("gfn", 11)) size acc   want source/exit action"
    }

    /// The flags as the detail panel prints them: merged bits by name, proposals marked, others as `bit N`.
    public static func flagText(_ flags: UInt64) -> String {
        let bits = FaultFlags.decode(flags)
        if bits.isEmpty { return "none" }
        var parts: [String] = []
        let merged = bits.filter { $0.status == .merged }.map(\.name)
        if !merged.isEmpty { parts.append(merged.joined(separator: " | ")) }
        let proposed = bits.filter { $0.status == .proposed }.map(\.name)
        if !proposed.isEmpty { parts.append("proposed, not merged: " + proposed.joined(separator: " ")) }
        let unknown = bits.filter { $0.status == .unknown }.map(\.name)
        if !unknown.isEmpty { parts.append("unknown: " + unknown.joined(separator: " ")) }
        return parts.joined(separator: "; ")
    }

    func faultsPane(_ s: inout Screen, _ r: Rect, _ m: InspectorModel, _ ui: InspectorUI) {
        var header = "total \(m.faultsReceived)  \(m.faultRate.last ?? 0)/s  dropped \(m.faultsDropped)"
        if ui.frozen { header += "  FROZEN" }
        if !ui.faultFilter.isEmpty { header += "  filter: \(ui.faultFilter.text)" }
        s.put(header, x: r.x, y: r.y, role: m.faultsDropped > 0 ? .warning : .header, limit: r.width)
        let spark = sparkline(Array(m.faultRate.suffix(max(0, min(30, r.width - header.count - 2)))))
        if header.count + 2 + spark.count <= r.width { s.put(spark, x: r.x + r.width - spark.count, y: r.y, role: .highlight) }

        let detailHeight = r.height >= 12 ? 5 : 0
        // Column headings where the pane has room for them (the faults pane had none: what is 8759ms from?).
        let headings = r.height >= 8 ? 1 : 0
        if headings > 0 { s.put(Self.faultColumns(width: r.width), x: r.x, y: r.y + 1, role: .header, limit: r.width) }
        let listHeight = r.height - 1 - headings - detailHeight
        let all = m.visibleFaults
        var shown: [FaultRecord] = []
        shown.reserveCapacity(listHeight * 2)
        // Newest first until the list and the cursor's offset are covered.
        let needed = listHeight + ui.faultCursor
        for f in ui.shownFaults(m) {
            shown.append(f)
            if shown.count >= needed { break }
        }
        let cursor = min(ui.faultCursor, max(0, shown.count - 1))
        let first = max(0, cursor - listHeight + 1)
        let window = Array(shown.dropFirst(first).prefix(listHeight))
        let baseNs = all.first?.timeNs ?? 0
        for (i, f) in window.reversed().enumerated() {
            let y = r.y + 1 + headings + (listHeight - window.count) + i
            let selected = ui.focus == .faults && first + window.count - 1 - i == cursor
            s.put(Self.faultLine(f, baseNs: baseNs, width: r.width, alias: m.aliasMask, conversion: m.conversionSteps[f.seq]), x: r.x, y: y, role: selected ? .cursor : (f.isPrivate ? .normal : .sharedPage), limit: r.width)
        }
        if shown.isEmpty {
            s.put(m.faultsReceived == 0 ? "no faults yet" : "no faults match the filter", x: r.x, y: r.y + 1 + headings, role: .dim, limit: r.width)
        }
        guard detailHeight > 0 else { return }
        let dy = r.y + r.height - detailHeight
        s.put(String(repeating: ascii ? "-" : "─", count: r.width), x: r.x, y: dy, role: .border)
        if ui.showLatency {
            latencyPanel(&s, Rect(x: r.x, y: dy + 1, width: r.width, height: detailHeight - 1), m.conversionLatency)
            return
        }
        guard cursor < shown.count else { return }
        let f = shown[cursor]
        var details = ["#\(f.seq) flags \(Fmt.hex(f.flags)) = \(Self.flagText(f.flags))"]
        let alias = m.aliasMask
        let viaAlias = f.gpa & alias != 0
        var place = "gpa \(Fmt.hex(f.gpa)) gfn \(m.canonicalGFN(f))\(viaAlias ? " via alias" : "") \(Fmt.size(f.size)) was \(f.attribute)"
        if let slot = f.slot, let ms = m.memslots.first(where: { $0.slot == slot }) {
            let start = ms.ramStart(aliasMask: alias)
            place += " · slot \(slot) (\(ms.view), \(ms.backing)) +\(Fmt.hex((f.gpa & ~alias) &- start))"
        } else {
            place += " · slot \(f.slot.map(String.init) ?? "none")"
        }
        details.append(place)
        let wanted = Self.statesWanted(f) ? "wants \(Self.attributeName(f.isPrivate))" : "attribute wanted not reported (kvm_mmio has none)"
        details.append("access \(f.access) · \(wanted) · \(f.source) via \(f.exit) · errno \(f.errno ?? "none") · \(f.action)")
        if let steps = m.conversionSteps[f.seq] {
            details.append("conversion traced: " + ConversionStep.allCases.map { "\($0.rawValue) \(steps[$0].map(Self.micros) ?? "-")" }.joined(separator: " · "))
        }
        if let t = f.tracedNs {
            let dt = Int64(bitPattern: f.timeNs &- t)
            details.append("also seen by KVM's \(f.exit == .memoryFault ? "kvm_userspace_exit" : "kvm_mmio") tracepoint, \(dt / 1000) µs before the VMM's record")
        }
        if f.source == .vmm { details.append("detected by the VMM (vmm engine), not a KVM_EXIT_MEMORY_FAULT") }
        else if f.source == .kernel && (f.flags & FaultRecord.flagPrivate != 0) != f.isPrivate {
            details.append("kernel flags give the attribute the access met; the guest used the \(viaAlias ? "shared alias" : "private view"), so it wants \(Self.attributeName(f.isPrivate))")
        }
        var y = dy + 1
        for line in details.flatMap({ wrap($0, r.width) }) where y < r.y + r.height {
            s.put(line, x: r.x, y: y, role: y == dy + 1 ? .highlight : (line.hasPrefix("detected") ? .dim : .normal), limit: r.width)
            y += 1
        }
    }

    /// `ns` as the fault rows and the histogram give it, as `trace` prints it: "12.3 µs", "420 µs", "15 ms".
    static func micros(_ ns: UInt64) -> String { ConversionTiming.micros(ns) }

    /// The conversion-latency histogram (`L`): one line a step, its count, a bar a log2 bucket from 1 µs to 1 s, and the
    /// bucket edges its median and 99th percentile lie under.
    func latencyPanel(_ s: inout Screen, _ r: Rect, _ h: LatencyHistogram) {
        let first = 10, last = 30   // 2^10 ns ≈ 1 µs … 2^30 ns ≈ 1 s
        s.put("conversion latency, traced (exit → KVM_SET_MEMORY_ATTRIBUTES → KVM_RUN), 1 µs … 1 s", x: r.x, y: r.y, role: .highlight, limit: r.width)
        guard ConversionStep.allCases.contains(where: { h.total($0) > 0 }) else {
            s.put("no conversion timed yet: needs kvm_vm_set_mem_attributes and the ioctl tracepoints (Linux 6.17+), and a trace (--trace)",
                  x: r.x, y: r.y + 1, role: .dim, limit: r.width)
            return
        }
        for (i, step) in ConversionStep.allCases.enumerated() where i + 1 < r.height {
            let counts = h.counts[step] ?? []
            var bars = counts.isEmpty ? [] : Array(counts[first...last])
            if !counts.isEmpty {
                bars[0] += counts[..<first].reduce(0, &+)
                bars[bars.count - 1] += counts[(last + 1)...].reduce(0, &+)
            }
            let q = [0.5, 0.99].map { h.quantile(step, $0).map { "<\(Self.micros($0))" } ?? "-" }
            let line = "\(Fmt.pad(step.rawValue, 8)) n \(Fmt.padLeft(String(h.total(step)), 6)) \(sparkline(bars.map { Int(min($0, 1 << 40)) })) p50 \(q[0]) p99 \(q[1])"
            s.put(line, x: r.x, y: r.y + 1 + i, role: .normal, limit: r.width)
        }
    }

    func wrap(_ text: String, _ width: Int) -> [String] { Self.wrapped(text, width) }

    /// `text` cut into lines of at most `width`, at spaces where possible.
    static func wrapped(_ text: String, _ width: Int) -> [String] {
        guard width > 0, text.count > width else { return [text] }
        var lines: [String] = []
        var current = ""
        for word in text.split(separator: " ", omittingEmptySubsequences: false) {
            if current.isEmpty { current = String(word) }
            else if current.count + 1 + word.count <= width { current += " " + word }
            else { lines.append(current); current = String(word) }
            while current.count > width { lines.append(String(current.prefix(width))); current = String(current.dropFirst(width)) }
        }
        if !current.isEmpty { lines.append(current) }
        return lines
    }

    func sparkline(_ values: [Int]) -> String {
        let glyphs: [Character] = ascii ? [" ", ".", ":", "|", "#"] : [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]
        let top = max(1, values.max() ?? 1)
        return String(values.map { glyphs[min(glyphs.count - 1, ($0 * (glyphs.count - 1) + top - 1) / top)] })
    }

    // MARK: Memslots

    public static func sortedMemslots(_ m: InspectorModel, _ sort: MemslotSort) -> [MemslotRow] {
        switch sort {
        case .slot: m.memslots.sorted { $0.slot < $1.slot }
        case .gpa: m.memslots.sorted { $0.gpa < $1.gpa }
        case .size: m.memslots.sorted { ($0.size, $1.slot) > ($1.size, $0.slot) }
        }
    }

    /// Row `row` of the memslot view as `sort` orders it.
    public static func memslot(atRow row: Int, _ m: InspectorModel, _ sort: MemslotSort) -> MemslotRow? {
        let rows = sortedMemslots(m, sort)
        return rows.indices.contains(row) ? rows[row] : nil
    }

    static func shortFlag(_ name: String) -> String {
        switch name { case "GUEST_MEMFD": "gmem"; case "READONLY": "ro"; case "LOG_DIRTY_PAGES": "dirty"; default: name.lowercased() }
    }

    /// One KVM-mapped range of a QEMU: no slot number (QMP does not say it), QEMU's region name and offset.
    static func qemuMemslotLine(_ ms: MemslotRow, narrow: Bool) -> String {
        let region = (ms.regionName ?? "?") + (ms.regionOffset.map { " @\(Fmt.hex($0))" } ?? "") + (ms.device.map { " · \($0)" } ?? "")
        if narrow {
            return "\(Fmt.hex(ms.gpa, width: 8)) \(Fmt.padLeft(Fmt.size(ms.size), 5)) \(Fmt.pad(ms.backing.rawValue, 4)) \(region)"
        }
        let range = "\(Fmt.hex(ms.gpa, width: 8))-\(Fmt.hex(ms.gpa.saturatingAdd(ms.size), width: 8))"
        return "\(Fmt.pad(range, 23)) \(Fmt.padLeft(Fmt.size(ms.size), 5))  \(Fmt.pad(ms.backing.rawValue, 6)) \(region)"
    }

    func memslotsPane(_ s: inout Screen, _ r: Rect, _ m: InspectorModel, _ ui: InspectorUI) {
        let narrow = r.width < 76
        let header = m.peerIsQEMU
            ? (narrow ? "gpa          size type region" : "gpa range               size   type   region (@offset) · KVM-mapped, from info mtree -f")
            : narrow ? "slot view    gpa          size flags priv/shared"
            : "slot view    gpa range               size  flags       backing      priv/shared"
        s.put(header + "  (\(m.memslots.count), by \(ui.memslotSort.rawValue))", x: r.x, y: r.y, role: .header, limit: r.width)
        let rows = Self.sortedMemslots(m, ui.memslotSort)
        let height = r.height - 1
        let cursor = min(ui.memslotCursor, max(0, rows.count - 1))
        let first = max(0, cursor - height + 1)
        for (i, ms) in rows.dropFirst(first).prefix(height).enumerated() {
            let line: String
            if !ms.slotKnown {
                line = Self.qemuMemslotLine(ms, narrow: narrow)
            } else if narrow {
                line = "\(Fmt.padLeft(String(ms.slot), 4)) \(Fmt.pad(ms.view.rawValue, 7)) \(Fmt.hex(ms.gpa, width: 8)) \(Fmt.padLeft(Fmt.size(ms.size), 5)) "
                    + "\(Fmt.pad(ms.flagNames.map(Self.shortFlag).joined(separator: ","), 5)) \(ms.privatePages)/\(ms.sharedPages)"
            } else {
                let range = "\(Fmt.hex(ms.gpa, width: 8))-\(Fmt.hex(ms.gpa.saturatingAdd(ms.size), width: 8))"
                line = "\(Fmt.padLeft(String(ms.slot), 4)) \(Fmt.pad(ms.view.rawValue, 7)) \(Fmt.pad(range, 23)) \(Fmt.padLeft(Fmt.size(ms.size), 5)) "
                    + "\(Fmt.pad(ms.flagNames.joined(separator: ","), 11)) \(Fmt.pad(ms.backing.rawValue, 12)) \(ms.privatePages)/\(ms.sharedPages)"
            }
            let selected = ui.focus == .memslots && first + i == cursor
            s.put(line, x: r.x, y: r.y + 1 + i, role: selected ? .cursor : (ms.view == .shared ? .sharedPage : .normal), limit: r.width)
        }
        if rows.isEmpty { s.put(m.peerIsQEMU ? "no KVM-mapped ranges in info mtree -f (yet)" : "no memslots", x: r.x, y: r.y + 1, role: .dim, limit: r.width) }
    }

    // MARK: vCPUs

    func vcpusPane(_ s: inout Screen, _ r: Rect, _ m: InspectorModel, _ ui: InspectorUI) {
        // The host thread last: what perf, top and gdb need, and what a narrow pane leaves out (whole, never cut).
        let threadFits = r.width >= 67
        s.put("vcpu state          last exit        exits      rate/s" + (threadFits ? "  thread" : ""), x: r.x, y: r.y, role: .header, limit: r.width)
        if m.vcpusLeftOut > 0 {
            let note = "(+\(m.vcpusLeftOut) vCPUs past KVM's \(InspectorModel.maxVCPUs) not shown)"
            s.put(note, x: max(r.x, r.x + r.width - note.count), y: r.y, role: .warning, limit: r.width)
        }
        var y = r.y + 1
        let seconds = Double(max(m.vcpuRefreshIntervalNs, 1)) / 1e9
        for v in m.vcpus where y < r.y + r.height {
            let prev = m.previousVCPUs.first { $0.index == v.index }
            // A counter that went backwards (the VM was restarted) has no rate.
            let rate = prev.map { v.totalExits >= $0.totalExits ? Double(v.totalExits - $0.totalExits) / seconds : 0 } ?? 0
            // A QEMU without KVM has no exit counters: none shown rather than zeros.
            let counted = !(m.peerIsQEMU && v.stats.isEmpty)
            let line = "\(Fmt.padLeft(String(v.index), 4)) \(Fmt.pad(v.state.rawValue, 14)) \(Fmt.pad(v.lastExit, 16)) "
                + "\(Fmt.padLeft(counted ? String(v.totalExits) : "-", 10)) \(Fmt.padLeft(counted ? String(Int(rate)) : "-", 10))"
                + (v.threadID > 0 && threadFits ? "  \(v.threadID)" : "")
            let role: Role = ui.focus == .vcpus && v.index == ui.vcpuCursor ? .cursor
                : (v.isInTrouble ? .warning : .normal)
            s.put(line, x: r.x, y: y, role: role, limit: r.width)
            y += 1
        }
        guard let v = m.vcpus.first(where: { $0.index == ui.vcpuCursor }) ?? m.vcpus.first else {
            s.put(m.connection == .disconnected("") ? "" : "no vCPUs reported", x: r.x, y: y, role: .dim, limit: r.width)
            return
        }
        let prev = m.previousVCPUs.first { $0.index == v.index }
        func oldValue(_ list: [(String, UInt64)]?, _ name: String) -> UInt64? { list?.first { $0.0 == name }?.1 }
        y += 1
        guard y < r.y + r.height else { return }
        if let error = v.error {
            for line in wrap("vCPU \(v.index) stopped: \(error)", r.width) where y < r.y + r.height {
                s.put(line, x: r.x, y: y, role: .error, limit: r.width)
                y += 1
            }
            guard y < r.y + r.height else { return }
        }
        s.put("vCPU \(v.index) registers", x: r.x, y: y, role: .title, limit: r.width)
        y += 1
        let cellWidth = 24
        let perRow = max(1, r.width / cellWidth)
        var items: [(String, UInt64, Bool)] = v.registers.map { name, value in (name, value, oldValue(prev?.registers, name).map { $0 != value } ?? false) }
        items += v.segments.map { ($0.0, $0.1, false) } + v.controlRegisters.map { ($0.0, $0.1, false) }
        for (i, item) in items.enumerated() {
            let row = y + i / perRow
            guard row < r.y + r.height else { break }
            s.put(Fmt.pad("\(Fmt.padLeft(item.0, 6)) \(Fmt.hex(item.1, width: 8))", cellWidth), x: r.x + (i % perRow) * cellWidth, y: row,
                  role: item.2 ? .changed : .normal, limit: r.width - (i % perRow) * cellWidth)
        }
        y += (items.count + perRow - 1) / perRow + (items.isEmpty ? 0 : 1)
        // Exits by reason, with what changed since the last refresh.
        if y < r.y + r.height && !v.exitCounts.isEmpty {
            let text = "exits: " + v.exitCounts.map { name, count in
                let delta = oldValue(prev?.exitCounts, name).map { count >= $0 ? count - $0 : 0 } ?? 0
                return delta > 0 ? "\(name) \(count) (+\(delta))" : "\(name) \(count)"
            }.joined(separator: "  ")
            s.put(text, x: r.x, y: y, role: .normal, limit: r.width)
            y += 1
        }
        if m.peerIsQEMU && v.stats.isEmpty && y < r.y + r.height {
            let why = m.vm.accelerator.map { $0.hasPrefix("kvm") ? "query-stats gave none" : "QEMU runs \($0)" } ?? "query-stats gave none"
            s.put("no KVM statistics: \(why)", x: r.x, y: y, role: .dim, limit: r.width)
            y += 1
        }
        let wanted = ["exits", "io_exits", "mmio_exits", "halt_exits", "insn_emulation", "signal_exits", "irq_exits", "nmi_injections"]
        let stats = wanted.compactMap { name in v.stats.first { $0.0 == name } } + v.guest.filter { Self.guestShown.contains($0.0) }
        for (i, st) in stats.enumerated() {
            let row = y + i / perRow
            guard row < r.y + r.height else { break }
            let changed = (oldValue(prev?.stats, st.0) ?? oldValue(prev?.guest, st.0)).map { $0 != st.1 } ?? false
            let role: Role = st.0 == GuestCounter.integrityErrors.rawValue && st.1 > 0 ? .error : (changed ? .changed : .normal)
            // At least one space before the next cell: a long count (insn_emulation 271137871) ran into its
            // neighbour; one that does not fit is shown in millions or billions instead of cut.
            var text = "\(st.0) \(st.1)"
            if text.count > cellWidth - 1 {
                text = "\(st.0) " + (st.1 >= 1_000_000_000 ? Fmt.format1(Double(st.1) / 1e9) + "G" : Fmt.format1(Double(st.1) / 1e6) + "M")
            }
            s.put(Fmt.pad(text, cellWidth), x: r.x + (i % perRow) * cellWidth, y: row, role: role,
                  limit: min(cellWidth - 1, r.width - (i % perRow) * cellWidth))
        }
        y += (stats.count + perRow - 1) / perRow
        // VM-wide KVM statistics, where the peer reports them (QEMU's query-stats target vm).
        let vmWanted = ["pages_4k", "pages_2m", "pages_1g", "mmu_shadow_zapped", "remote_tlb_flush", "nx_lpage_splits"]
        let vmStats = vmWanted.compactMap { name in m.vmStats.first { $0.0 == name } }
        if !vmStats.isEmpty && y < r.y + r.height {
            s.put("VM: " + vmStats.map { "\($0.0) \($0.1)" }.joined(separator: "  "), x: r.x, y: y, role: .dim, limit: r.width)
        }
    }

    /// The views as tabs (below `tabsBelow` columns): each by its number, the focused one marked; Tab and 1-4 move.
    func tabStrip(_ s: inout Screen, _ ui: InspectorUI) {
        var x = 0
        for p in Pane.allCases {
            let label = p == ui.focus ? "[\(p.title)]" : " \(p.title) "
            s.put(label, x: x, y: 1, role: p == ui.focus ? .focusedTitle : .title, limit: s.width - x)
            x += label.count + 1
        }
        s.put("Tab/1-4", x: x + 1, y: 1, role: .dim, limit: max(0, s.width - x - 1))
    }

    // MARK: Overlays

    func overlay(_ s: inout Screen, _ o: Overlay, _ m: InspectorModel, _ ui: InspectorUI) {
        switch o {
        case .help:
            let lines = InspectorUI.helpLines(readOnly: ui.readOnly, width: s.width - 8)
            // As many lines as fit, from the scroll position (clamped so the last page stays full).
            let visible = max(1, min(s.height - 2, lines.count + 2) - 2)
            let first = max(0, min(ui.helpScroll, lines.count - visible))
            let shown = Array(lines[first..<min(lines.count, first + visible)])
            let title = lines.count > visible
                ? "Keys and terms \(first + 1)-\(first + shown.count) of \(lines.count) (j/k PgUp/PgDn scroll, q closes)"
                : "Keys and terms (q or Esc closes)"
            dialog(&s, title: title, lines: shown)
        case .confirm(let prompt, _):
            dialog(&s, title: "Confirm", lines: [prompt])
        case .injectMenu(let sel):
            let (gpa, size) = ui.targetRange
            let lines = ui.injectionKinds.enumerated().map { i, k in
                (i == sel ? "> " : "  ") + k.rawValue + ": " + {
                    switch k {
                    case .mce: "machine check into vCPU \(ui.vcpuCursor) for \(Fmt.hex(gpa))"
                    case .nmi: "NMI into vCPU \(ui.vcpuCursor)"
                    case .discard: "punch the backing of \(Fmt.size(size)) at \(Fmt.hex(gpa))"
                    case .revoke: "unmap \(Fmt.size(size)) at \(Fmt.hex(gpa))"
                    case .flip: "convert \(Fmt.size(size)) at \(Fmt.hex(gpa)) behind the guest's back"
                    }
                }()
            }
            dialog(&s, title: "Inject a fault (j/k, Enter, or the first letter; Esc cancels)", lines: lines)
        case .hexDump(let gpa, let bytes):
            guard let bytes else { dialog(&s, title: "read-memory \(Fmt.hex(gpa))", lines: ["reading…"]); return }
            // As many rows as fit, from the scroll position (clamped so the last screen stays full).
            let rows = (bytes.count + 15) / 16
            let visible = max(1, min(s.height - 2, rows + 2) - 2)
            let first = max(0, min(ui.hexScroll, rows - visible))
            var lines: [String] = []
            for row in stride(from: first * 16, to: min(bytes.count, (first + visible) * 16), by: 16) {
                let chunk = bytes[row..<min(row + 16, bytes.count)]
                let hexPart = chunk.map { Fmt.padLeft(String($0, radix: 16), 2).replacingSpaces() }.joined(separator: " ")
                let text = String(chunk.map { $0 >= 32 && $0 < 127 ? Character(UnicodeScalar($0)) : "." })
                lines.append("\(Fmt.hex(gpa &+ UInt64(row), width: 8))  \(Fmt.pad(hexPart, 47))  \(text)")
            }
            let span = "bytes \(first * 16)-\(min(bytes.count, (first + visible) * 16) - 1) of \(bytes.count)"
            dialog(&s, title: "read-memory \(Fmt.hex(gpa)) (\(span); j/k PgUp/PgDn scroll, q closes)", lines: lines)
        }
    }

    func dialog(_ s: inout Screen, title: String, lines: [String]) {
        let w = min(s.width - 4, max(title.count + 6, (lines.map(\.count).max() ?? 0) + 4))
        let h = min(s.height - 2, lines.count + 2)
        let r = Rect(x: (s.width - w) / 2, y: (s.height - h) / 2, width: w, height: h)
        s.fill(r, role: .dialog)
        s.box(r, title: title, focused: true, ascii: ascii)
        for (i, l) in lines.prefix(h - 2).enumerated() {
            s.put(l, x: r.x + 2, y: r.y + 1 + i, role: .dialog, limit: w - 4)
        }
    }
}

extension String {
    func replacingSpaces() -> String { String(map { $0 == " " ? "0" : $0 }) }
}
