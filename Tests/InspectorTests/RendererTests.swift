import ControlProtocol
import Foundation
import Testing
@testable import Inspector

/// A small VM as the views would see it: 64 MiB, a shared hole, two vCPUs, a few faults.
func fixtureModel() throws -> InspectorModel {
    var m = InspectorModel()
    m.apply(vm: try JSON.parse(#"{"name":"fixture","attribute-engine":"vmm","shared-alias":31,"ram-size":67108864,"vcpus":2,"mutations-allowed":true,"fault-injection-allowed":true,"fault-policy":"convert"}"#))
    m.apply(memslots: try JSON.parse(#"""
        [{"slot":0,"as-id":0,"gpa":0,"size":1048576,"flags":4,"flag-names":["GUEST_MEMFD"],"view":"private","backing":"guest_memfd","guest-memfd-offset":0,"userspace-addr":1},
         {"slot":7,"as-id":0,"gpa":2148532224,"size":1048576,"flags":0,"flag-names":[],"view":"shared","backing":"memfd","guest-memfd-offset":null,"userspace-addr":2},
         {"slot":2,"as-id":0,"gpa":2097152,"size":65011712,"flags":4,"flag-names":["GUEST_MEMFD"],"view":"private","backing":"guest_memfd","guest-memfd-offset":2097152,"userspace-addr":3}]
        """#))
    m.apply(attributes: try JSON.parse(#"{"runs":[{"gpa":0,"size":1048576,"private":true},{"gpa":1048576,"size":1048576,"private":false},{"gpa":2097152,"size":65011712,"private":true}]}"#))
    m.apply(vcpus: try JSON.parse(#"""
        [{"index":0,"thread-id":11,"state":"running","last-exit":"MMIO","exit-counts":{"IO":10,"MMIO":5},"regs":{"rax":1,"rip":393216},"sregs":{"cs":{"selector":8},"cr0":17},"stats":{"exits":15,"insn_emulation":900},"guest":{"heartbeat":7,"integrity-errors":0}},
         {"index":1,"thread-id":12,"state":"fault-stopped","last-exit":"MMIO","exit-counts":{"IO":3},"regs":{"rax":2,"rip":393300},"sregs":{},"stats":{"exits":3},"guest":{"heartbeat":2,"integrity-errors":3}}]
        """#), intervalNs: 1_000_000_000)
    m.connection = .connected("vmscope 0.1.0")
    let event = try JSON.parse(#"""
        {"event":"MEMORY_FAULT","data":{"dropped":4,"records":[
         {"seq":5,"time-ns":1000000000,"vcpu":0,"gpa":1052672,"size":4096,"flags":8,"private":true,"access":"write","errno":null,"source":"vmm","exit":"MMIO","attribute":"shared","slot":7,"action":"converted"},
         {"seq":6,"time-ns":1500000000,"vcpu":1,"gpa":3145728,"size":4096,"flags":27,"private":true,"access":"read","errno":"EFAULT","source":"kernel","exit":"MEMORY_FAULT","attribute":"private","slot":2,"action":"paused"}]},
         "timestamp":{"seconds":1,"microseconds":0}}
        """#)
    m.apply(event: event, nowNs: 2_000_000_000)
    return m
}

func ui(focus: Pane = .map) -> InspectorUI {
    var u = InspectorUI()
    u.focus = focus
    u.totalPages = 16384
    return u
}

struct RendererTests {
    @Test func countersThatWentBackwardsShowNoRateAndDoNotTrap() throws {
        // A VM restarted under the inspector: its exit counters start again below the last reading.
        var m = try fixtureModel()
        m.apply(vcpus: [VCPURow(index: 0, state: "running", lastExit: "IO", exitCounts: [("IO", 1_000_000)])], intervalNs: 1_000_000_000)
        m.apply(vcpus: [VCPURow(index: 0, state: "running", lastExit: "IO", exitCounts: [("IO", 7)])], intervalNs: 1_000_000_000)
        let text = Renderer().render(m, ui(focus: .vcpus), width: 200, height: 60).text
        let row = try #require(text.split(separator: "\n").first { $0.contains("   0 running") })
        #expect(row.hasSuffix("7          0") || row.contains(" 7          0 "), "\(row)")
        #expect(text.contains("IO 7") && !text.contains("(+"), "no delta against the old counter")
    }

    @Test(arguments: [(80, 24), (200, 60)])
    func everyViewAtBothSizes(width: Int, height: Int) throws {
        let m = try fixtureModel()
        let s = Renderer(nowNs: 2_000_000_000).render(m, ui(), width: width, height: height)
        // Below 100 columns the views are tabs: each is looked at in turn.
        let text = Renderer.tabbed(width: width)
            ? Pane.allCases.map { Renderer(nowNs: 2_000_000_000).render(m, ui(focus: $0), width: width, height: height).text }.joined(separator: "\n")
            : s.text
        #expect(s.lines.count == height)
        #expect(s.lines.allSatisfy { $0.count <= width })
        #expect(s.lines[0].contains("fixture") && s.lines[0].contains("engine vmm") && s.lines[0].contains("policy convert"))
        #expect(s.lines[0].contains("dropped 4"))
        for title in ["1 GFN map", "2 Faults", "3 Memslots", "4 vCPUs"] { #expect(text.contains(title), "\(title) missing") }
        // Map: cursor line and legend.
        #expect(text.contains("0x0 gfn 0 private slot 0"))
        #expect(text.contains("█ private") && text.contains("░ shared"))
        // Faults: the newest record's line (its text is cut to the pane), the counters.
        #expect(text.contains("total 2"))
        // A tab has the whole width: the line as wide panes show it (at 80 columns in four panes it was cut to
        // "     6 v1 0x00300000 read  priv paused").
        let full = width >= 160 || Renderer.tabbed(width: width)
        #expect(text.contains(full ? "      6 " : "     6 v1 0x00300000 read  priv paused"))
        // Memslots: rows, shared slot counted against RAM pages.
        #expect(text.contains(full ? "GUEST_MEMFD" : "gmem"))
        #expect(text.contains("shared"))
        // vCPUs: both rows with their states.
        #expect(text.contains("running") && text.contains("fault-stopped"))
        if width >= 200 {
            #expect(text.contains("0x00300000 gfn 768"))
            #expect(text.contains("dropped 4"))
            #expect(text.contains("256/0"), "slot 0: 256 private pages")
            #expect(text.contains("0/256"), "slot 7: the shared alias of 1 MiB")
            #expect(text.contains("rip 0x00060000"))
            #expect(text.contains("integrity-errors 0"))
            #expect(text.contains("exits: IO 10  MMIO 5"))
        }
    }

    @Test func faultDetailDecodesEveryFlagBit() throws {
        let m = try fixtureModel()
        var u = ui(focus: .faults)
        u.faultCursor = 0
        let text = Renderer().render(m, u, width: 200, height: 60).text
        // flags 27 = 0b11011: READ, WRITE (proposed), PRIVATE (merged), USERFAULT/TAGACCESS (proposed).
        #expect(text.contains("#6 flags 0x1b = PRIVATE; proposed, not merged: READ WRITE USERFAULT/TAGACCESS"))
        #expect(text.contains("slot 2 (private, guest_memfd) +0x100000"))
        #expect(text.contains("access read · wants private · kernel via MEMORY_FAULT · errno EFAULT · paused"))
        u.faultCursor = 1
        let older = Renderer().render(m, u, width: 200, height: 60).text
        #expect(older.contains("#5 flags 0x8 = PRIVATE"))
        #expect(older.contains("detected by the VMM (vmm engine), not a KVM_EXIT_MEMORY_FAULT"))
    }

    @Test func unknownFlagBitsAreShownByNumber() {
        #expect(Renderer.flagText(1 << 40 | 8) == "PRIVATE; unknown: bit 40")
        #expect(Renderer.flagText(0) == "none")
    }

    @Test func theStatusBarShowsAReplaysTimelineAndARecording() throws {
        let m = try fixtureModel()
        var ui = InspectorUI()
        ui.readOnly = true
        ui.replay = ReplayStatus(positionNs: 72_345_000_000, durationNs: 90_000_000_000, speed: 2, paused: true)
        var top = Renderer().render(m, ui, width: 160, height: 40).lines[0]
        #expect(top.hasPrefix(" vmscope │ REPLAY ‖ 1:12.345 / 1:30.000 ×2 │ fixture"), "\(top)")
        #expect(!top.contains("READ-ONLY"), "a replay is read-only by nature; the timeline says so")
        ui.replay?.paused = false
        ui.replay?.speed = 0.5
        top = Renderer().render(m, ui, width: 160, height: 40).lines[0]
        #expect(top.contains("REPLAY ▶ 1:12.345 / 1:30.000 ×0.5"), "\(top)")
        #expect(Renderer().render(m, ui, width: 160, height: 40).lines[39].contains("Space play/pause"))

        var live = InspectorUI()
        live.recording = RecordingStatus(file: "/tmp/x/vmscope-recording-1.jsonl.gz", startedNs: 1_000_000_000)
        top = Renderer(nowNs: 66_500_000_000).render(m, live, width: 160, height: 40).lines[0]
        #expect(top.hasPrefix(" vmscope │ ● REC 1:05 vmscope-recording-1.jsonl.gz │ fixture"), "\(top)")
    }

    @Test func timelineKeysActOnlyInAReplay() {
        var ui = InspectorUI()
        #expect(ui.handle(.char("]")).isEmpty && ui.status?.isError == true)
        #expect(ui.handle(.char(" ")).isEmpty)
        #expect(ui.handle(.char("S")) == [.snapshot] && ui.handle(.char("R")) == [.toggleRecording])
        ui.replay = ReplayStatus(positionNs: 0, durationNs: 1, speed: 1, paused: false)
        #expect(ui.handle(.char("]")) == [.replay(.skip(seconds: 10))] && ui.handle(.char("[")) == [.replay(.skip(seconds: -10))])
        #expect(ui.handle(.char("{")) == [.replay(.previousBurst)] && ui.handle(.char("}")) == [.replay(.nextBurst)])
        #expect(ui.handle(.char(" ")) == [.replay(.togglePause)])
        #expect(ui.handle(.char("R")).isEmpty && ui.status?.text.contains("replay") == true)
    }

    @Test func tooSmallSaysSo() throws {
        let s = Renderer().render(try fixtureModel(), ui(), width: 50, height: 12)
        #expect(s.text.contains("window too small"))
        #expect(s.text.contains("60×16") && s.text.contains("50×12"))
        #expect(!s.text.contains("GFN map"))
    }

    @Test func maximisedViewAndOverlays() throws {
        let m = try fixtureModel()
        var u = ui(focus: .memslots)
        u.maximized = true
        let s = Renderer().render(m, u, width: 80, height: 24).text
        #expect(s.contains("3 Memslots") && !s.contains("1 GFN map"))
        u.overlay = .help
        let help = Renderer().render(m, u, width: 200, height: 60).text
        for b in InspectorUI.bindings { #expect(help.contains(b.help), "help lacks \(b.label)") }
        u.overlay = .hexDump(gpa: 0x1000, bytes: Array(0..<32))
        let hex = Renderer().render(m, u, width: 120, height: 40).text
        #expect(hex.contains("0x00001000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"))
    }

    @Test func readOnlyHidesTheMutatingKeys() throws {
        var u = ui()
        u.readOnly = true
        let s = Renderer().render(try fixtureModel(), u, width: 120, height: 30)
        #expect(s.lines[0].contains("READ-ONLY"))
        #expect(s.lines.last?.contains("(read-only)") == true && s.lines.last?.contains("convert") == false)
    }

    @Test func disconnectedIsShownInTheStatusBar() throws {
        var m = try fixtureModel()
        m.connection = .disconnected("the VMM went away")
        let s = Renderer().render(m, ui(), width: 120, height: 30)
        #expect(s.lines[0].contains("disconnected — retrying: the VMM went away"))
    }

    @Test func asciiModeUsesNoBlockGlyphs() throws {
        let s = Renderer(ascii: true).render(try fixtureModel(), ui(), width: 100, height: 30).text
        #expect(!s.contains("█") && !s.contains("─"))
        #expect(s.contains("# private") && s.contains(". shared"))
    }
}

