import Schema
import Testing
@testable import Inspector

/// The faults pane has column headings (issue 27, item 9: what is `8759ms` measured from?).
struct FaultColumnsTests {
    @Test func theListHasHeadingsOverItsColumns() throws {
        let m = try fixtureModel()
        for (w, h) in [(80, 24), (160, 48)] {
            let lines = Renderer().render(m, ui(focus: .faults), width: w, height: h).text.split(separator: "\n").map(String.init)
            let heading = try #require(lines.firstIndex { $0.contains("seq") && $0.contains("gpa") && $0.contains("want") }, "\(w)x\(h):\n\(lines.joined(separator: "\n"))")
            // The heading sits above the rows: the first fault row comes after it.
            #expect(lines.firstIndex { $0.contains("0x00101000") }.map { $0 > heading } == true, "\(w)x\(h)")
        }
        let wide = Renderer.faultColumns(width: 160)
        #expect(wide.contains("t ms") && wide.contains("source/exit"))
    }
}
