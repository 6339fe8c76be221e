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
            // As many lines as fit, from the scroll position (the key table keeps the last page full).
            let visible = Self.dialogRows(lines.count, height: s.height)
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
            let visible = Self.dialogRows(rows, height: s.height)
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

    /// How many of `count` lines a dialog shows on a frame `height` rows high (its box takes two).
    static func dialogRows(_ count: Int, height: Int) -> Int { max(1, min(height - 2, count + 2) - 2) }

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
