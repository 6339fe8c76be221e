import Schema
import Testing
@testable import Inspector

/// `--ascii` means ASCII in every cell (issue 27, item 13: it still drew │ and ·).
struct ASCIIScreenTests {
    @Test func everyCellIsASCII() throws {
        var m = try fixtureModel()
        m.heatMapNote = "a note · with a dot"
        for focus in [Pane.map, .faults, .memslots, .vcpus] {
            for (w, h) in [(80, 24), (160, 48)] {
                var u = ui(focus: focus)
                u.ascii = true
                let text = Renderer(ascii: true, nowNs: 2_000_000_000).render(m, u, width: w, height: h).text
                #expect(text.unicodeScalars.allSatisfy { $0.isASCII }, "\(focus) \(w)x\(h):\n\(text)")
            }
        }
    }
}
