import Inspector
import Schema
import Testing

/// Attribute runs from a peer or a file that are unsorted, overlapping, empty or wrapping (issue 28, class 2) used
/// to trap the map's cell computation (snapshot --text, attach, replay all exited 132). The model repairs them and
/// says so above the map; the map's cells never trap whatever runs they are given.
struct HostileRunsTests {
    static let hostile: [AttributeRun] = [
        AttributeRun(gpa: 0x200_0000, size: 0x10_0000, isPrivate: false),      // out of order
        AttributeRun(gpa: 0, size: 0x400_0000, isPrivate: true),               // covers everything after it
        AttributeRun(gpa: 0x100_0000, size: 0x20_0000, isPrivate: false),      // overlaps both
        AttributeRun(gpa: 0x300_0000, size: 0, isPrivate: false),              // empty
        AttributeRun(gpa: .max - 0xFFF, size: 0x10_0000, isPrivate: true),     // wraps past 2^64
    ]

    @Test func theModelSortsClipsAndSaysSo() throws {
        var m = try fixtureModel()
        m.apply(attributes: AttributeRuns(runs: Self.hostile, privateBytes: 0, sharedBytes: 0))
        #expect(zip(m.runs, m.runs.dropFirst()).allSatisfy { $0.end <= $1.gpa }, "sorted, not overlapping: \(m.runs)")
        #expect(m.runs.allSatisfy { $0.size > 0 })
        #expect(m.runs.first == AttributeRun(gpa: 0, size: 0x400_0000, isPrivate: true), "the first run stands: \(m.runs)")
        let note = try #require(m.runsRepaired)
        #expect(note.contains("out of order") && note.contains("overlapping") && note.contains("empty"), "\(note)")
        // Every layout renders, and the note stands above the map.
        for (w, h) in [(80, 24), (120, 40), (160, 48)] {
            let text = Renderer(nowNs: 2_000_000_000).render(m, ui(), width: w, height: h).text
            #expect(text.contains("attribute runs from the peer repaired"), "\(w)x\(h):\n\(text)")
        }
        // Well-formed runs are left as they are, and say nothing.
        m.apply(attributes: AttributeRuns(runs: [AttributeRun(gpa: 0, size: 0x400_0000, isPrivate: true)], privateBytes: 0, sharedBytes: 0))
        #expect(m.runsRepaired == nil)
    }

    @Test func theCellsNeverTrapOnRunsTheyAreGivenRaw() {
        for pages: UInt64 in [1, 16384, .max / 4096] {
            let g = MapGeometry(pagesPerCell: max(1, pages / 64), firstCell: 0, columns: 8, rows: 8)
            let cells = GFNMap.cells(runs: Self.hostile, totalPages: pages, geometry: g, recentFaults: RecentFaults(), nowNs: 0,
                                     backed: [5..<9, 0..<100, 3..<4])
            #expect(cells.count == 64)
        }
    }
}

