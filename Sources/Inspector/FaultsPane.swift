import ControlProtocol
import HostTracing

/// The memory-fault pane: the stream's rows, the selected row's details, the latency histogram.
extension Renderer {
    /// "private" or "shared".
    static func attributeName(_ isPrivate: Bool) -> String { (isPrivate ? PageAttribute.private : .shared).rawValue }

    /// Whether the record says which attribute the access wanted: kvm_mmio (a traced MMIO row) does not, so
    /// nothing is shown there rather than a guess.
    static func statesWanted(_ f: FaultRecord) -> Bool { !(f.source == .trace && f.exit == .mmio) }

    /// One row of the fault list; `alias` is the VM's shared-alias mask: the gfn shown is the RAM page, an access
    /// through the alias marked `a`.
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
}
