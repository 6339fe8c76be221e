import Inspector
import Schema
import Testing

/// A name from a peer or another process holding terminal escapes (issue 28, class 7) reaches no terminal raw:
/// text outputs and the TUIs show its control characters as escapes; a newline cuts no line, breaks no box edge.
struct TerminalTextTests {
    static let hostile = "vm\u{1B}]0;pwned\u{07}\u{1B}[2J\nrow\r\u{7F}\u{9B}31m\tend"

    @Test func controlCharactersAreShownNotActedOn() {
        let shown = terminalSafe(Self.hostile)
        #expect(shown == #"vm\e]0;pwned\x07\e[2J\nrow\r\x7f\u{9b}31m\tend"#, "\(shown)")
        #expect(!shown.unicodeScalars.contains { $0.value < 0x20 || ($0.value >= 0x7F && $0.value <= 0x9F) })
        // Clean text (Unicode included) is left as it is.
        #expect(terminalSafe("vmscope │ ░▒ démo") == "vmscope │ ░▒ démo")
    }

    @Test func theScreenAndEveryPaneShowThemEscaped() throws {
        var m = try fixtureModel()
        m.vm.name = Self.hostile
        for (w, h) in [(80, 24), (160, 48)] {
            let screen = Renderer().render(m, ui(), width: w, height: h)
            let text = screen.text
            #expect(!text.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x9B }, "\(text)")
            #expect(text.split(separator: "\n", omittingEmptySubsequences: false).count == h, "a newline in a name cut a line")
        }
    }
}

