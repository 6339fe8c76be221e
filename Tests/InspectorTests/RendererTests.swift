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

struct GFNMapTests {
    @Test func cellsCountTheSamePagesAsABruteForceWalk() {
        var rng = SystemRandomNumberGenerator()
        let total: UInt64 = 10_000
        var runs: [RunRow] = []
        var gfn: UInt64 = 0
        var p = true
        while gfn < total {
            let len = min(UInt64.random(in: 1...300, using: &rng), total - gfn)
            runs.append(RunRow(gpa: gfn * 4096, size: len * 4096, isPrivate: p))
            gfn += len
            p.toggle()
        }
        for span in [1, 8, 64, 256] as [UInt64] {
            let g = MapGeometry(pagesPerCell: span, firstCell: 3, columns: 17, rows: 5)
            let cells = GFNMap.cells(runs: runs, totalPages: total, geometry: g, recentFaults: [:], nowNs: 0)
            #expect(cells.count == 17 * 5)
            for c in cells {
                var priv: UInt64 = 0, shared: UInt64 = 0
                for page in c.firstGFN..<max(c.firstGFN, min(c.firstGFN + span, total)) {
                    let r = runs.first { $0.gpa / 4096 <= page && page < $0.end / 4096 }!
                    if r.isPrivate { priv += 1 } else { shared += 1 }
                }
                #expect(c.privatePages == priv && c.sharedPages == shared, "span \(span) cell at \(c.firstGFN)")
            }
        }
    }

    @Test func fittingSpanCoversAllOfRAM() {
        let span = MapGeometry.fitting(totalPages: 1 << 28, columns: 200, rows: 50)   // 1 TiB
        #expect(span.nonzeroBitCount == 1)
        #expect((1 << 28) / span <= 200 * 50 && (1 << 28) / (span / 2) > 200 * 50)
    }

    @Test func recentFaultsHeatTheirCell() {
        let runs = [RunRow(gpa: 0, size: 1 << 20, isPrivate: true)]
        let g = MapGeometry(pagesPerCell: 16, firstCell: 0, columns: 16, rows: 1)
        let cells = GFNMap.cells(runs: runs, totalPages: 256, geometry: g, recentFaults: [40: 1_000], nowNs: 1_000)
        #expect(cells[2].heat == 1 && cells[1].heat == 0)
        #expect(GFNMap.glyph(cells[2], ascii: true).1 == .faulted)
    }

    /// A fault through the shared alias names the RAM page (gfn without the alias bit, marked `a`), and a kernel
    /// record whose PRIVATE bit disagrees with the view the guest used says which is which.
    @Test func aliasFaultsNameTheRAMPageAndKernelFlagsAreExplained() throws {
        var m = try fixtureModel()
        var f = FaultRecord(seq: 9, timeNs: 1_600_000_000, vcpu: 1, gpa: 0x8012_0000, flags: 8, access: "unknown",
                         source: "kernel", exit: "MEMORY_FAULT", attribute: "private", slot: 7)
        f.isPrivate = false   // through the alias: the guest wanted the shared view
        f.errno = "EFAULT"
        m.append(fault: f, nowNs: 2_000_000_000)
        #expect(m.canonicalGFN(f) == 0x120)
        let row = Renderer.faultLine(f, baseNs: 0, width: 200, alias: m.aliasMask)
        #expect(row.contains("gfn 288a"), "\(row)")
        #expect(row.contains(" -     shrd kernel converted flags 0x8"), "\(row)")
        var u = ui(focus: .faults)
        u.faultCursor = 0
        let text = Renderer(nowNs: 2_000_000_000).render(m, u, width: 200, height: 60).text
        #expect(text.contains("gfn 288 via alias"), "\(text)")
        #expect(text.contains("gpa 0x80120000 gfn 288 via alias 4K was private · slot 7 (shared, memfd) +0x20000"), "\(text)")
        #expect(text.contains("kernel flags give the attribute the access met; the guest used the shared alias, so it wants"), "\(text)")
        // Without an alias bit nothing is stripped.
        #expect(Renderer.faultLine(f, baseNs: 0, width: 200).contains("gfn 524576 "))
    }

    /// A vCPU stopped by an exit it cannot go on from says which, with the exit's data.
    @Test func anErroredVCPUSaysWhy() throws {
        var m = try fixtureModel()
        m.apply(vcpus: try JSON.parse(#"""
            [{"index":0,"thread-id":11,"state":"error","last-exit":"INTERNAL_ERROR","exit-counts":{"INTERNAL_ERROR":1},"regs":{},"sregs":{},"stats":{},"guest":{},
              "error":"KVM_EXIT_INTERNAL_ERROR suberror 1 (EMULATION) data [0x0, 0x1000]"}]
            """#), intervalNs: 1_000_000_000)
        let text = Renderer(nowNs: 2_000_000_000).render(m, ui(focus: .vcpus), width: 200, height: 60).text
        #expect(text.contains("vCPU 0 stopped: KVM_EXIT_INTERNAL_ERROR suberror 1 (EMULATION) data [0x0, 0x1000]"), "\(text)")
    }
}

/// The map as a heat map (a stock QEMU with KVM's tracepoints on: no attributes, traced accesses with GPAs): RAM
/// from the KVM-mapped ranges, each recently traced page lit wherever it lies (the local APIC's page is far above
/// RAM), the reason there are no attributes in the legend, and the cursor line saying what is under it.
struct HeatMapTests {
    func qemuModel() -> InspectorModel {
        var m = InspectorModel()
        m.vm.ramSize = 32 << 20
        m.memslots = [MemslotRow(slot: 0, gpa: 0, size: 0xA0000, view: "plain", backing: "ram"),
                      MemslotRow(slot: 1, gpa: 0x10_0000, size: (32 << 20) - 0x10_0000, view: "plain", backing: "ram")]
        m.heatMapNote = "QEMU 7.2.22: no guest_memfd (QEMU added it in 9.1); private/shared map unavailable"
        return m
    }

    func trace(_ gpa: UInt64, at ns: UInt64) -> FaultRecord {
        FaultRecord(seq: 1, timeNs: ns, vcpu: 0, gpa: gpa, size: 4, flags: 0, isPrivate: false, access: .write, source: .trace,
                    exit: .mmio, attribute: .none, slot: nil, action: .reported)
    }

    @Test func tracedPagesLightUpOverQEMUsRAMAndAboveIt() throws {
        var m = qemuModel()
        #expect(m.mapPages == (32 << 20) / 4096, "before any access: RAM")
        m.apply(faults: FaultBatch(records: [trace(0xFEE0_0300, at: 1), trace(0x20_0000, at: 1)], dropped: 0), nowNs: 1_000_000_000)
        #expect(m.mapPages == 0xFEE01, "the APIC page widens the map")
        var u = ui()
        u.fit(m, width: 200, height: 60)
        let s = Renderer(nowNs: 1_500_000_000).render(m, u, width: 200, height: 60)
        let text = s.text
        let pane = try #require(Renderer.layout(width: 200, height: 60, ui: u)[.map])
        let note = Renderer.heatNote(m, width: pane.inner.width)
        #expect(note.joined(separator: " ") == "heat map of KVM's traced accesses · QEMU 7.2.22: no guest_memfd (QEMU added it in 9.1); private/shared map unavailable")
        #expect(s.lines[pane.inner.y].contains(note[0]), "the note above the grid: \(text)")
        let (cols, rows) = Renderer.mapGrid(pane, noteLines: note.count)
        #expect((cols, rows) == (u.mapColumns, u.mapRows), "fit gives the UI the grid the renderer draws")
        let map = Rect(x: pane.inner.x, y: pane.inner.y + note.count, width: cols, height: rows)
        var lit = 0, ram = 0, blank = 0
        for i in 0..<(cols * rows) {
            let c = s[map.x + i % cols, map.y + i / cols]
            if c.role == .faulted { lit += 1 } else if c.char == "·" { ram += 1 } else if c.char == " " { blank += 1 }
        }
        let span = MapGeometry.fitting(totalPages: m.mapPages, columns: cols, rows: rows)
        #expect(lit == 2, "the RAM page and the APIC page, \(span) pages a cell")
        #expect(ram == Int(((32 << 20) / 4096 + span - 1) / span) - 1, "RAM cells, one of them lit")
        #expect(blank > 0, "the hole between RAM and the APIC is neither")
        #expect(text.contains("0x0 gfn 0 KVM-mapped RAM, attribute not reported"), "\(text)")
        // Three seconds on, the marks have faded; the extent stays.
        let later = Renderer(nowNs: 5_000_000_000).render(m, u, width: 200, height: 60)
        #expect(!(0..<(cols * rows)).contains { later[map.x + $0 % cols, map.y + $0 / cols].role == .faulted })
        #expect(m.mapPages == 0xFEE01)
    }

    @Test func theCursorLineSaysWhenACellWasLastTraced() throws {
        var m = qemuModel()
        m.apply(faults: FaultBatch(records: [trace(0xFEE0_0300, at: 1)], dropped: 0), nowNs: 1_000_000_000)
        var u = ui()
        u.fit(m, width: 200, height: 60)
        u.cursorGFN = 0xFEE00
        let text = Renderer(nowNs: 1_250_000_000).render(m, u, width: 200, height: 60).text
        #expect(text.contains("gfn \(0xFEE00) not KVM-mapped (device or hole) · cell traced 250 ms ago"), "\(text)")
    }
}

/// The traced map (issue 29): known pages drawn private or shared, the rest as unknown, and the view says where its
/// attributes come from and what it cannot know.
struct TracedMapViewTests {
    @Test func knownPagesAreDrawnAndTheRestIsUnknown() throws {
        var m = InspectorModel()
        // A trace that began after the VM: it saw [0x100, 0x200) made private and [0x200, 0x300) shared, and one refusal.
        m.apply(attributes: AttributeRuns(runs: [AttributeRun(gpa: 0x10_0000, size: 0x10_0000, isPrivate: true),
                                                 AttributeRun(gpa: 0x20_0000, size: 0x10_0000, isPrivate: false)],
                                          privateBytes: 0x10_0000, sharedBytes: 0x10_0000))
        m.tracedMap = .init(unknown: [0..<0x100], pages: 0x300, applied: 2, refused: 1, lastRefusal: "gfn 0x400-0x500 to private: ENOMEM", complete: false)
        m.connection = .connected("kernel tracepoints (vmscope-1)")
        #expect(m.mapPages == 0x300)
        var u = ui()
        u.totalPages = 0x300
        u.fit(m, width: 200, height: 60)
        let s = Renderer(nowNs: 1).render(m, u, width: 200, height: 60)
        let pane = try #require(Renderer.layout(width: 200, height: 60, ui: u)[.map])
        let note = Renderer.heatNote(m, width: pane.inner.width).joined(separator: " ")
        #expect(note.contains("private/shared from KVM's tracepoints") && note.contains("2 conversions, 1 refused")
                && note.contains("unknown pages: not converted since the trace began"), "\(note)")
        #expect(s.text.contains("· unknown"), "the legend names the unknown glyph: \(s.text)")
        // The grid: the first third unknown (·), then private (█), then shared (░).
        let (cols, rows) = Renderer.mapGrid(pane, noteLines: Renderer.heatNote(m, width: pane.inner.width).count)
        let cells = GFNMap.cells(runs: m.runs, totalPages: m.mapPages, geometry: MapGeometry(pagesPerCell: MapGeometry.fitting(totalPages: m.mapPages, columns: cols, rows: rows), firstCell: 0, columns: cols, rows: rows),
                                 recentFaults: m.recentFaults, nowNs: 1, backed: m.tracedMap!.unknown)
        let glyphs = cells.filter { !$0.outside }.map { GFNMap.glyph($0, ascii: false).0 }
        #expect(glyphs.first == "·" && glyphs.contains("█") && glyphs.last == "░", "\(String(glyphs))")
        // The cursor on an unknown page says so, never "outside RAM" nor a guess.
        u.cursorGFN = 0x10
        let cursor = Renderer(nowNs: 1).render(m, u, width: 200, height: 60).text
        #expect(cursor.contains("gfn 16 unknown (no conversion traced)"), "\(cursor)")
    }

    /// A guest's KVM_HC_MAP_GPA_RANGE the VMM has not answered yet: its pages drawn ◆, the legend and the cursor line
    /// say what the guest asked for, the note counts it beside the requests answered.
    @Test func aPendingGuestRequestIsDrawnWhereTheGuestAsked() throws {
        var m = InspectorModel()
        m.apply(attributes: AttributeRuns(runs: [AttributeRun(gpa: 0, size: 0x30_0000, isPrivate: true)], privateBytes: 0x30_0000, sharedBytes: 0))
        var t = InspectorModel.TracedMapState(unknown: [], pages: 0x300, applied: 5, refused: 0, lastRefusal: nil, complete: true)
        t.pendingRequests = [.init(gfns: 0x280..<0x281, toPrivate: false, requestedNs: 1)]
        t.answeredRequests = [("converted by the VMM", 4)]
        m.tracedMap = t
        var u = ui()
        u.totalPages = 0x300
        u.fit(m, width: 200, height: 60)
        u.cursorGFN = 0x280
        let s = Renderer(nowNs: 1).render(m, u, width: 200, height: 60).text
        #expect(s.contains("◆ asked"), "the legend: \(s)")
        #expect(s.contains("gfn 640 private · the guest asked for shared (KVM_HC_MAP_GPA_RANGE, pending)"), "the cursor line: \(s)")
        let pane = try #require(Renderer.layout(width: 200, height: 60, ui: u)[.map])
        let note = Renderer.heatNote(m, width: pane.inner.width).joined(separator: " ")
        #expect(note.contains("guest requests (KVM_HC_MAP_GPA_RANGE): 1 pending, 4 converted by the VMM"), "\(note)")
        u.cursorGFN = 0
        let away = Renderer(nowNs: 1).render(m, u, width: 200, height: 60)
        #expect(away.text.filter { $0 == "◆" }.count == 2, "one cell and the legend: \(away.text)")
        // Answered: no mark left.
        m.tracedMap?.pendingRequests = []
        #expect(!Renderer(nowNs: 1).render(m, u, width: 200, height: 60).text.contains("◆"))
    }
}

/// Issue 27, item 9: at 80×24 four 38-column panes cut words, the legend and the exit counts. Below 100 columns the
/// views are tabs, one at a time at full width; Tab and 1-4 move between them; from 100 columns, all four.
struct TabsTests {
    @Test func below100ColumnsOneViewAtATimeWithTabs() throws {
        let m = try fixtureModel()
        var u = ui()
        let narrow = Renderer().render(m, u, width: 80, height: 24)
        #expect(narrow.lines[1].hasPrefix("[1 GFN map]  2 Faults "), "\(narrow.lines[1])")
        #expect(narrow.text.contains("┌─ 1 GFN map") && !narrow.text.contains("┌─ 2 Faults") && !narrow.text.contains("┌─ 4 vCPUs"), "\(narrow.text)")
        // The map's legend fits whole at full width.
        #expect(narrow.text.contains("█ private ░ shared"), "\(narrow.text)")
        _ = u.handle(.tab)
        let faults = Renderer().render(m, u, width: 80, height: 24)
        #expect(faults.lines[1].contains("[2 Faults]") && faults.text.contains("┌─ 2 Faults") && !faults.text.contains("┌─ 1 GFN map"))
        _ = u.handle(.char("4"))
        #expect(Renderer().render(m, u, width: 99, height: 24).text.contains("┌─ 4 vCPUs"))
        let wide = Renderer().render(m, u, width: 100, height: 30).text
        #expect(["┌─ 1 GFN map", "┌─ 2 Faults", "┌─ 3 Memslots", "┌─ 4 vCPUs"].allSatisfy { wide.contains($0) } && !wide.contains("Tab/1-4"), "\(wide)")
    }
}
