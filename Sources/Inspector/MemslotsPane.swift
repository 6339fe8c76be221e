import ControlProtocol
import HostTracing

/// The memslots pane.
extension Renderer {
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
}
