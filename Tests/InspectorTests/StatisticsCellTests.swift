import Inspector
import Schema
import Testing

/// The vCPU pane's statistics never run into each other (issue 27, item 13: `insn_emulation 271137871signal_exits`).
struct StatisticsCellTests {
    @Test func aLongCountLeavesASpaceAndIsNotCut() throws {
        var m = try fixtureModel()
        m.vcpus[0].stats = [("exits", 300), ("insn_emulation", 271_137_871), ("signal_exits", 7), ("io_exits", 12_345_678_901)]
        for (w, h) in [(120, 40), (160, 48), (200, 60)] {
            let text = Renderer().render(m, ui(focus: .vcpus), width: w, height: h).text
            #expect(!text.contains("271137871signal") && !text.contains("insn_emulation 27113787s"), "\(w)x\(h):\n\(text)")
            #expect(text.contains("insn_emulation 271137871 ") || text.contains("insn_emulation 271.1M"), "\(w)x\(h):\n\(text)")
        }
    }
}
