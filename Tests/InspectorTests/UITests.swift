import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

struct UITests {
    @Test func selectingARangeAndPressingSAsksThenConverts() {
        var u = ui()
        u.mapColumns = 64
        u.mapRows = 16
        u.pagesPerCell = 16
        #expect(u.handle(.char(":")).isEmpty)
        for c in "goto 0x100000" { _ = u.handle(.char(c)) }
        _ = u.handle(.enter)
        #expect(u.cursorGFN == 256)
        _ = u.handle(.char("v"))
        _ = u.handle(.char("l"))
        _ = u.handle(.char("l"))
        _ = u.handle(.char("v"))
        #expect(u.selection?.lowerBound == 256 && u.selection?.upperBound == 256 + 3 * 16 - 1)
        #expect(u.handle(.char("s")).isEmpty)
        guard case .confirm(let prompt, _)? = u.overlay else { Issue.record("no confirmation"); return }
        #expect(prompt == "Convert 192K at 0x100000 to shared? y/N")
        let effects = u.handle(.char("y"))
        #expect(effects == [.act(.convert(gpa: 0x100000, size: 192 << 10, to: .shared))])
        #expect(InspectorAction.convert(gpa: 0x100000, size: 192 << 10, to: .shared).description == "convert 192K at 0x100000 to shared")
        // Anything but y cancels.
        _ = u.handle(.char("p"))
        #expect(u.handle(.char("n")).isEmpty && u.overlay == nil)
    }

    @Test func xDumpsTheMapCursorsPageOrTheSelectedMemslotsStart() throws {
        var m = InspectorModel()
        m.vm.ramSize = 1 << 30
        m.memslots = [MemslotRow(slot: 2, gpa: 0xfffc_0000, size: 0x40000, view: "plain", backing: "rom"),
                      MemslotRow(slot: 0, gpa: 0, size: 0xa0000, view: "plain", backing: "ram"),
                      MemslotRow(slot: 1, gpa: 0x10_0000, size: 0x3ff0_0000, view: "plain", backing: "ram")]
        var u = ui()
        u.fit(m, width: 200, height: 60)
        u.cursorGFN = 0x123
        #expect(u.handle(.char("x")) == [.act(.readMemory(gpa: 0x123000, size: 4096))], "the map: the page under the cursor")
        u.overlay = nil
        _ = u.handle(.char("3"))
        _ = u.handle(.char("j"))
        #expect(u.handle(.char("x")) == [.readMemslot(row: 1)])
        #expect(Renderer.memslot(atRow: 1, m, u.memslotSort)?.gpa == 0x10_0000, "by slot, the second row is slot 1")
        // Sorted by size, the same row is another slot.
        _ = u.handle(.char("o")); _ = u.handle(.char("o"))
        #expect(u.memslotSort == .size)
        #expect(Renderer.memslot(atRow: 1, m, u.memslotSort)?.gpa == 0)
        #expect(Renderer.memslot(atRow: 3, m, u.memslotSort) == nil)
        // The cursor never runs past the rows: from the end, one up is the row before the last.
        _ = u.handle(.char("G"))
        #expect(u.handle(.char("x")) == [.readMemslot(row: 2)])
        _ = u.handle(.char("j"))
        _ = u.handle(.char("k"))
        #expect(u.handle(.char("x")) == [.readMemslot(row: 1)])
    }

    @Test func theFaultCursorStaysOnTheFaultsShown() {
        var m = InspectorModel()
        m.apply(faults: FaultBatch(records: (1...10).map { FaultRecord(seq: $0, vcpu: Int($0 % 2), gpa: $0 * 4096, flags: 8, access: "write") },
                                   dropped: 0), nowNs: 1)
        var u = ui(focus: .faults)
        _ = u.handle(.char("g"))
        u.fit(m, width: 200, height: 60)
        #expect(u.faultCursor == 9, "the oldest of ten")
        _ = u.handle(.char("j"))
        #expect(u.faultCursor == 8, "one newer, at once")
        // Filtered to vCPU 1 (five faults), the same cursor is past the oldest shown: it comes back to it.
        u.faultFilter = (try? FaultFilter.parse("vcpu=1").get()) ?? FaultFilter()
        u.faultCursor = 8
        u.fit(m, width: 200, height: 60)
        #expect(u.faultCursor == 4)
        u.faultCursor = 2
        u.fit(m, width: 200, height: 60)
        #expect(u.faultCursor == 2, "a cursor within the list stays")
    }

    @Test func readOnlyRefusesEveryMutatingKey() {
        var u = ui()
        u.readOnly = true
        for b in InspectorUI.bindings where b.mutates {
            #expect(u.handle(b.keys[0]).isEmpty, "\(b.label)")
            #expect(u.overlay == nil)
            #expect(u.status?.isError == true)
        }
        for c in "convert 0 4K shared" { _ = u.handle(c == ":" ? .char(c) : .char(c)) }
        var v = ui()
        v.readOnly = true
        _ = v.handle(.char(":"))
        for c in "convert 0 4K shared" { _ = v.handle(.char(c)) }
        #expect(v.handle(.enter).isEmpty)
    }

    @Test func injectionMenuBuildsTheRightArguments() {
        var u = ui()
        u.vcpuCursor = 1
        _ = u.handle(.char("i"))
        #expect(u.overlay == .injectMenu(selected: 0))
        guard case .act(let nmi)? = u.handle(.char("n")).first, case .inject(.nmi, 1, _, _) = nmi else {
            Issue.record("n: no nmi into vCPU 1"); return
        }
        #expect(nmi.description == "inject nmi into vCPU 1")
        _ = u.handle(.char("i"))
        _ = u.handle(.down)
        _ = u.handle(.down)
        guard case .act(.inject(let kind, _, _, let size))? = u.handle(.enter).first else { Issue.record("no effect"); return }
        #expect(kind == .discard && size > 0)
    }

    @Test func filtersParseOrSayWhy() {
        #expect((try? FaultFilter.parse("vcpu=1 access=write source=vmm gpa=0x1000-0x2000").get())?.gpaRange == 0x1000...0x2000)
        for bad in ["vcpu=x", "access=sideways", "gpa=5", "colour=red", "loose"] {
            guard case .failure(let e) = FaultFilter.parse(bad) else { Issue.record("\(bad) accepted"); continue }
            #expect(e.message.hasPrefix("filter:"))
        }
        var u = ui()
        _ = u.handle(.char("/"))
        for c in "vcpu=9" { _ = u.handle(.char(c)) }
        _ = u.handle(.enter)
        #expect(u.faultFilter.vcpu == 9)
        let f = FaultRecord(seq: 1, vcpu: 1, gpa: 0, flags: 8, access: "read")
        #expect(!u.faultFilter.matches(f))
    }

    @Test func badCommandsSayHowToUseThem() {
        var u = ui()
        for (line, text) in [("convert 0 4K sideways", "usage: convert"), ("goto nowhere", "usage: goto"), ("frobnicate", "unknown command")] {
            _ = u.handle(.char(":"))
            for c in line { _ = u.handle(.char(c)) }
            #expect(u.handle(.enter).isEmpty)
            #expect(u.status?.isError == true && u.status?.text.contains(text) == true, "\(line)")
        }
    }

    @Test func zoomHalvesDownToSinglePagesAndBackToFit() {
        var u = ui()
        u.mapColumns = 64
        u.mapRows = 16
        u.totalPages = 1 << 28
        let fit = u.effectivePagesPerCell
        for _ in 0..<40 { _ = u.handle(.char("+")) }
        #expect(u.effectivePagesPerCell == 1)
        for _ in 0..<40 { _ = u.handle(.char("-")) }
        #expect(u.pagesPerCell == nil && u.effectivePagesPerCell == fit)
    }
}

