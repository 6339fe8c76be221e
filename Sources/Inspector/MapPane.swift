import ControlProtocol
import HostTracing

/// The GFN map pane: private/shared cells (or a heat map of traced accesses), its note, cursor line and legend.
extension Renderer {
    /// The map's grid (columns, rows) in a pane: its inner area less the legend and cursor lines, and the heat
    /// map's note above the grid.
    public static func mapGrid(_ r: Rect, noteLines: Int = 0) -> (columns: Int, rows: Int) {
        (max(1, r.inner.width), max(1, r.inner.height - 2 - noteLines))
    }

    /// A heat map's note, wrapped to the pane's inner `width` (at most 2 lines, 3 with the guest's traced requests;
    /// none when the map has attributes).
    /// A map whose runs the model had to repair says so there instead.
    public static func heatNote(_ m: InspectorModel, width: Int) -> [String] {
        if let t = m.tracedMap {
            let known = t.complete ? "traced from before the VM: every page known" : "unknown pages: not converted since the trace began"
            let refused = t.refused == 0 ? "" : ", \(t.refused) refused" + (t.lastRefusal.map { " (last: \($0))" } ?? "")
            let asked = t.pendingRequests.isEmpty && t.answeredRequests.isEmpty ? ""
                : " · guest requests (KVM_HC_MAP_GPA_RANGE): \(t.pendingRequests.count) pending"
                    + t.answeredRequests.map { ", \($0.count) \($0.outcome)" }.joined()
            // A third line for the guest's requests, when there are any (at 80 columns the rest takes two).
            return Array(wrapped("private/shared from KVM's tracepoints (kvm_vm_set_mem_attributes, applied once its ioctl returned 0) · \(known) · \(t.applied) conversions\(refused)\(asked)", width).prefix(asked.isEmpty ? 2 : 3))
        }
        guard let note = m.heatMapNote else {
            return m.runsRepaired.map { Array(wrapped($0, width).prefix(2)) } ?? []
        }
        return Array(wrapped("heat map of KVM's traced accesses · " + note, width).prefix(2))
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
            if let t = m.tracedMap, !c.outside, t.pendingRequests.contains(where: { $0.gfns.map { $0.lowerBound <= cellEnd && c.firstGFN < $0.upperBound } ?? false }) {
                (ch, role) = (ascii ? "?" : "◆", .highlight)
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
            let asked = m.tracedMap?.pendingRequest(at: ui.cursorGFN).map { r in
                " · the guest asked for " + (r.toPrivate.map { $0 ? "private" : "shared" } ?? "a change") + " (KVM_HC_MAP_GPA_RANGE, pending)"
            } ?? ""
            cursorLine = "\(Fmt.hex(gpa)) gfn \(ui.cursorGFN) \(attr)\(asked) \(slot) · \(Fmt.size(span * 4096))/cell"
        }
        s.put(cursorLine, x: r.x, y: r.y + rows, role: .highlight, limit: r.width)
        let legend: [(String, Role)] = heatOnly
            ? (ascii ? [(": KVM-mapped RAM ", .dim), ("! traced in the last 3 s ", .faulted), ("sel ", .selection)]
                     : [("· KVM-mapped RAM ", .dim), ("█▓ traced in the last 3 s ", .faulted), ("▒ selected", .selection)])
            : ascii
            ? [("# private ", .privatePage), (". shared ", .sharedPage), ("+- mixed ", .mixed)] + (m.tracedMap != nil ? [(": unknown ", .dim)] : [])
                + (m.tracedMap?.pendingRequests.isEmpty == false ? [("? asked ", .highlight)] : [])
                + [("! faulted ", .faulted), ("sel ", .selection)]
            : [("█ private ", .privatePage), ("░ shared ", .sharedPage), ("▓▒ mixed ", .mixed)] + (m.tracedMap != nil ? [("· unknown ", .dim)] : [])
                + (m.tracedMap?.pendingRequests.isEmpty == false ? [("◆ asked ", .highlight)] : [])
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
}
