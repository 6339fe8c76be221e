import Algorithms
/// One cell of the GFN map: a power-of-two span of guest pages.
public struct MapCell: Sendable, Equatable {
    public var firstGFN: UInt64
    public var pages: UInt64
    public var privatePages: UInt64
    public var sharedPages: UInt64
    /// 0 (no recent fault) to 1 (faulted just now).
    public var heat: Double
    /// Pages a memslot maps whose attribute no source reports (a heat map's RAM).
    public var unknownPages: UInt64 = 0
    /// Past the end of RAM (and, in a heat map, outside every memslot).
    public var outside: Bool { privatePages + sharedPages + unknownPages == 0 }
}

/// How the map is cut into cells: `pagesPerCell` (a power of two), the first cell shown, and the grid.
public struct MapGeometry: Sendable, Equatable {
    public var pagesPerCell: UInt64
    public var firstCell: UInt64
    public var columns: Int
    public var rows: Int

    public init(pagesPerCell: UInt64, firstCell: UInt64, columns: Int, rows: Int) {
        self.pagesPerCell = pagesPerCell
        self.firstCell = firstCell
        self.columns = columns
        self.rows = rows
    }

    /// The smallest power-of-two span that fits all of RAM in the grid.
    public static func fitting(totalPages: UInt64, columns: Int, rows: Int) -> UInt64 {
        let cells = UInt64(max(1, columns * rows))
        var span: UInt64 = 1
        while (totalPages + span - 1) / span > cells && span < 1 << 52 { span <<= 1 }
        return span
    }
}

public enum GFNMap {
    /// Cells for the grid, row by row. O(cells + runs in view): the runs are walked once, in step with the cells.
    /// `backed`: page ranges mapped without a known attribute (a heat map's memslots), sorted, not overlapping.
    public static func cells(runs: [RunRow], totalPages: UInt64, geometry g: MapGeometry,
                             recentFaults: RecentFaults, nowNs: UInt64, fadeNs: UInt64 = 3_000_000_000,
                             backed: [Range<UInt64>] = []) -> [MapCell] {
        let count = g.columns * g.rows
        var out: [MapCell] = []
        out.reserveCapacity(count)
        // The first run that ends after the first cell's start.
        let startPage = g.firstCell * g.pagesPerCell
        var k = runs.partitioningIndex { $0.end / 4096 > startPage }
        var kb = backed.partitioningIndex { $0.upperBound > startPage }
        // Faults bucketed by cell (only those in view).
        var heatByCell: [UInt64: Double] = [:]
        for (gfn, t) in recentFaults {
            let age = nowNs &- t
            guard age < fadeNs else { continue }
            let cell = gfn / g.pagesPerCell
            guard cell >= g.firstCell && cell < g.firstCell + UInt64(count) else { continue }
            heatByCell[cell] = max(heatByCell[cell] ?? 0, 1 - Double(age) / Double(fadeNs))
        }
        for i in 0..<count {
            let cell = g.firstCell + UInt64(i)
            let a = cell * g.pagesPerCell
            let b = min(a + g.pagesPerCell, totalPages)
            var p: UInt64 = 0, s: UInt64 = 0
            if a < b {
                while k < runs.count && runs[k].end / 4096 <= a { k += 1 }
                var j = k
                while j < runs.count && runs[j].gpa / 4096 < b {
                    // Runs are normalised by the model (sorted, not overlapping); a caller's that are not cannot trap.
                    let hi = min(b, runs[j].end / 4096), lo = max(a, runs[j].gpa / 4096)
                    let overlap = hi > lo ? hi - lo : 0
                    if runs[j].isPrivate { p = p.saturatingAdd(overlap) } else { s = s.saturatingAdd(overlap) }
                    j += 1
                }
            }
            var u: UInt64 = 0
            if !backed.isEmpty {
                let hi = a.saturatingAdd(g.pagesPerCell)
                while kb < backed.count && backed[kb].upperBound <= a { kb += 1 }
                var j = kb
                while j < backed.count && backed[j].lowerBound < hi {
                    let top = min(hi, backed[j].upperBound), bottom = max(a, backed[j].lowerBound)
                    u = u.saturatingAdd(top > bottom ? top - bottom : 0)
                    j += 1
                }
            }
            out.append(MapCell(firstGFN: a, pages: g.pagesPerCell, privatePages: p, sharedPages: s, heat: heatByCell[cell] ?? 0,
                               unknownPages: u))
        }
        return out
    }

    /// The glyph and role of a cell.
    /// A recent access shows wherever it lies: in a heat map, device pages outside RAM light up too.
    public static func glyph(_ c: MapCell, ascii: Bool) -> (Character, Role) {
        if c.heat > 0.05 { return (ascii ? "!" : (c.heat > 0.5 ? "█" : "▓"), .faulted) }
        if c.outside { return (" ", .outside) }
        if c.privatePages + c.sharedPages == 0 { return (ascii ? ":" : "·", .dim) }
        if c.sharedPages == 0 { return (ascii ? "#" : "█", .privatePage) }
        if c.privatePages == 0 { return (ascii ? "." : "░", .sharedPage) }
        let share = Double(c.sharedPages) / Double(c.privatePages + c.sharedPages)
        if ascii { return (share < 0.5 ? "+" : "-", .mixed) }
        return (share < 0.34 ? "▓" : share < 0.67 ? "▒" : "░", .mixed)
    }
}
