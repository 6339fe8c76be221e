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

/// The status bar at 80 and 120 columns (issue 27, item 2): a dead VM never looks alive.
struct StatusBarTests {
    @Test(arguments: [80, 120])
    func disconnectedIsAlwaysShownAndTheOldRateGoes(width: Int) throws {
        var m = try fixtureModel()
        m.eventRate = 4321
        m.connection = .disconnected("/tmp/vmscope-demo-abcdef/vm.sock: connect: Connection refused (the VMM went away)")
        let bar = Renderer().render(m, ui(), width: width, height: 30).text.split(separator: "\n").first.map(String.init) ?? ""
        #expect(bar.contains("disconnected"), "\(bar)")
        #expect(!bar.contains("4321 ev/s"), "a rate from before the VMM went: \(bar)")
        #expect(bar.contains("policy convert"), "\(bar)")
    }
}

/// What an action will do is said exactly (issue 27, item 12: the prompt said `Convert 4.3M` for 0x440000 bytes).
struct ExactSizeTests {
    @Test func actionsSayExactSizes() {
        #expect(Fmt.exactSize(0x440000) == "4352K")
        #expect(Fmt.exactSize(1 << 20) == "1M" && Fmt.exactSize(0x1800) == "6K" && Fmt.exactSize(4097) == "4097B")
        #expect(InspectorAction.convert(gpa: 0x100000, size: 0x440000, to: .shared).description == "convert 4352K at 0x100000 to shared")
    }
}

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
