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

struct ThemeTests {
    static var themesDirectory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../themes").standardized.path
    }

    @Test func everyShippedThemeParsesAndCoversEveryRole() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.themesDirectory).filter { $0.hasSuffix(".json") }
        #expect(Set(files).isSuperset(of: ["default.json", "high-contrast.json", "light.json", "mono.json"]))
        for f in files {
            let t = try Theme.parse(try String(contentsOfFile: Self.themesDirectory + "/" + f, encoding: .utf8), file: f)
            #expect(t.styles.count == Role.allCases.count, "\(f)")
        }
    }

    @Test func badThemesNameTheLine() throws {
        let good = try String(contentsOfFile: Self.themesDirectory + "/default.json", encoding: .utf8)
        let unknownRole = good.replacingOccurrences(of: "\"dialog\"", with: "\"dialogue\"")
        #expect(throws: Theme.LoadError.self) { try Theme.parse(unknownRole, file: "t.json") }
        do { _ = try Theme.parse(unknownRole, file: "t.json") } catch {
            let line = 1 + good.prefix(upTo: good.range(of: "\"dialog\"")!.lowerBound).filter { $0 == "\n" }.count
            #expect(error.line == line && error.reason.contains("dialogue"))
        }
        let brokenJSON = "{\n  \"name\": \"x\",\n  \"roles\": {\n    \"normal\": {\"fg\": }\n  }\n}\n"
        do { _ = try Theme.parse(brokenJSON, file: "b.json"); Issue.record("accepted") } catch {
            #expect(error.line == 4, "\(error)")
            #expect(error.description.hasPrefix("b.json:4:"))
        }
        let badColour = good.replacingOccurrences(of: "\"fg\": \"cyan\"", with: "\"fg\": \"teal\"")
        #expect(throws: Theme.LoadError.self) { try Theme.parse(badColour, file: "c.json") }
    }
}

struct ModelTests {
    @Test func faultEventsAccumulateAndDropsAreCounted() throws {
        let m = try fixtureModel()
        #expect(m.faultsReceived == 2 && m.faultsDropped == 4)
        #expect(m.visibleFaults.map(\.seq) == [5, 6])
        #expect(m.recentFaults[257] == 2_000_000_000)
        #expect(m.memslot(containing: 0x100000)?.slot == 7)
        #expect(m.attribute(at: 0x100000) == false && m.attribute(at: 0x200000) == true && m.attribute(at: 1 << 30) == nil)
    }

    @Test func fadingMarksStayBoundedUnderABurst() {
        var m = InspectorModel(faultCapacity: 1000)
        for i in 0..<50_000 as Range<UInt64> {
            m.append(fault: FaultRecord(seq: i + 1, vcpu: 0, gpa: i * 4096, flags: 8, access: "read"), nowNs: 1_000 + i)
        }
        #expect(m.recentFaults.count == m.recentFaults.capacity)
        #expect(m.recentFaults[49_999] == 1_000 + 49_999, "the newest mark is kept")
        #expect(m.visibleFaults.count == 1000 && m.visibleFaults.last?.seq == 50_000)
        #expect(m.faultsReceived == 50_000)
    }

    @Test func aBatchLeavesTheModelAsItsRecordsOneByOneWould() {
        // Batches smaller than, straddling and larger than the buffer, across a second boundary.
        var batched = InspectorModel(faultCapacity: 700), single = InspectorModel(faultCapacity: 700)
        var seq: UInt64 = 0
        for (n, ns) in [(300, 1_000), (0, 1_200), (500, 1_000_000_500), (1_500, 1_000_000_900), (7, 4_000_000_000)]
            as [(Int, UInt64)] {
            let records = (0..<n).map { _ -> FaultRecord in
                seq += 1
                return FaultRecord(seq: seq, vcpu: Int(seq % 3), gpa: seq * 4096, flags: 8, access: "write")
            }
            batched.apply(faults: FaultBatch(records: records, dropped: 2), nowNs: ns)
            single.faultsDropped += 2
            for r in records { single.append(fault: r, nowNs: ns) }
        }
        #expect(batched.visibleFaults.map(\.seq) == single.visibleFaults.map(\.seq))
        #expect(batched.visibleFaults.count == 700 && batched.visibleFaults.last?.seq == seq)
        #expect(batched.faultsReceived == single.faultsReceived && batched.faultsDropped == single.faultsDropped)
        #expect(batched.faultRate == single.faultRate && batched.faultRate.reduce(0, +) == 2_307)
        #expect(Array(batched.recentFaults.map(\.gfn)) == Array(single.recentFaults.map(\.gfn)))
    }

    @Test func changeEventsMarkQueriesStale() throws {
        var m = try fixtureModel()
        #expect(!m.memslotsStale && !m.attributesStale)
        m.apply(event: try JSON.parse(#"{"event":"MEMORY_ATTRIBUTES_CHANGED","data":{"gpa":0,"size":4096,"private":false,"cause":"command","vcpu":null}}"#), nowNs: 0)
        #expect(m.memslotsStale && m.attributesStale)
    }

    /// A dropped event may have been a change of either (and an action no longer re-reads everything): the views
    /// are read again, not left as they were.
    @Test func droppedEventsMarkQueriesStale() throws {
        var m = try fixtureModel()
        m.apply(event: try JSON.parse(#"{"event":"EVENTS_DROPPED","data":{"count":3}}"#), nowNs: 0)
        #expect(m.memslotsStale && m.attributesStale && m.eventsDropped == 3)
    }
}

struct ThemeFileTests {
    let dir: String = {
        let d = NSTemporaryDirectory() + "vmscope-themes-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    /// Issue 19: a 200 MB theme was read whole, a non-UTF-8 one dropped with no message, `"attrs": "bold"`
    /// accepted, and every theme in the directory parsed at each start.
    @Test func badThemeFilesAreRefusedByNameAndOnlyWhenAskedFor() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = try String(contentsOfFile: ThemeTests.themesDirectory + "/default.json", encoding: .utf8)
        let huge = dir + "/huge.json"
        #expect(FileManager.default.createFile(atPath: huge, contents: nil))
        #expect(truncate(huge, 200 << 20) == 0)  // sparse: 200 MB that would take seconds and memory to read
        let latin1 = dir + "/latin1.json"
        try good.replacingOccurrences(of: "\"default\"", with: "\"caf\u{E9}\"").data(using: String.Encoding.isoLatin1)!.write(to: URL(fileURLWithPath: latin1))
        let attrs = dir + "/attrs.json"
        try good.replacingOccurrences(of: #""attrs": ["bold"]"#, with: #""attrs": "bold""#).write(toFile: attrs, atomically: true, encoding: .utf8)
        #expect(try String(contentsOfFile: attrs, encoding: .utf8).contains(#""attrs": "bold""#), "the fixture has a string attrs")

        let catalog = ThemeCatalog()
        for name in ["huge", "latin1", "attrs"] { catalog.offer(name, path: dir + "/\(name).json") }
        catalog.offer("default", path: ThemeTests.themesDirectory + "/default.json")
        // Nothing is read before it is asked for.
        #expect(["huge", "latin1", "attrs"].allSatisfy { catalog.problem($0) == nil })
        let started = Date()
        #expect(catalog["huge"] == nil)
        #expect(Date().timeIntervalSince(started) < 0.5)
        #expect(catalog.problem("huge") == "theme \(huge): \(200 << 20) bytes; a theme file is at most 64 KiB")
        #expect(catalog["latin1"] == nil)
        #expect(catalog.problem("latin1") == "theme \(latin1): not UTF-8 text")
        #expect(catalog["attrs"] == nil)
        #expect(catalog.problem("attrs")?.contains("attrs must be a list") == true, "\(catalog.problem("attrs") ?? "accepted")")
        #expect(catalog["default"] != nil && catalog.problem("default") == nil)
    }
}

/// Issue 27, item 6: P on a QEMU someone else started stopped the whole VM at once, one Shift from p. On a VM
/// vmscope did not start, pause, resume and injection ask first (y goes ahead, anything else cancels), unless
/// `--allow-control`; on vmscope's own VMM (its `--allow-mutations` is the consent) they act at once.
struct ControlConsentTests {
    static func model(qemu: Bool) -> InspectorModel {
        var m = InspectorModel()
        m.vm.ramSize = 64 << 20
        m.vm.name = "guest-a"
        m.vm.pid = 4242
        if qemu { m.vm.qemuVersion = "QEMU 9.2.0" }
        m.vcpus = [VCPURow(index: 0, state: .known(.running), lastExit: "HLT")]
        return m
    }

    @Test func pauseOnAQEMUVmscopeDidNotStartAsksFirst() throws {
        var u = ui()
        u.fit(Self.model(qemu: true), width: 160, height: 48)
        u.focus = .vcpus
        #expect(u.handle(.char("P")).isEmpty, "nothing happens before the answer")
        guard case .confirm(let prompt, _)? = u.overlay else { Issue.record("no question: \(String(describing: u.overlay))"); return }
        #expect(prompt.contains("Pause vCPU 0") && prompt.contains("guest-a (pid 4242)") && prompt.contains("did not start"), "\(prompt)")
        #expect(u.handle(.char("n")).isEmpty && u.overlay == nil, "anything but y cancels")
        _ = u.handle(.char("P"))
        #expect(u.handle(.char("y")) == [.act(.vcpu(index: 0, .pause))])
    }

    @Test func allowControlAndOwnVMMsActAtOnce() {
        var u = ui()
        u.allowControl = true
        u.fit(Self.model(qemu: true), width: 160, height: 48)
        u.focus = .vcpus
        #expect(u.handle(.char("P")) == [.act(.vcpu(index: 0, .pause))])
        var own = ui()
        own.fit(Self.model(qemu: false), width: 160, height: 48)
        own.focus = .vcpus
        #expect(own.handle(.char("P")) == [.act(.vcpu(index: 0, .pause))])
    }

    @Test func injectingIntoAQEMUAsksFirst() {
        var u = ui()
        u.fit(Self.model(qemu: true), width: 160, height: 48)
        _ = u.handle(.char("i"))
        #expect(u.handle(.char("n")).isEmpty)
        guard case .confirm(let prompt, let effect)? = u.overlay else { Issue.record("no question: \(String(describing: u.overlay))"); return }
        #expect(prompt.hasPrefix("Inject nmi into vCPU 0 of guest-a"), "\(prompt)")
        #expect(effect == .act(.inject(.nmi, vcpu: 0, gpa: 0, size: 4096)) || { if case .act(.inject(.nmi, _, _, _)) = effect { true } else { false } }())
    }
}

/// Issue 27, item 13: `top` showed `-` for a QEMU's exits without saying why, and did not mark its sort column.
struct TopLegendTests {
    static func rows() -> [HostVMs.Row] {
        let vmm = HostVMs.Sample(pid: 100, directory: "100-11", name: "vmscope", vcpus: 2,
                                 stats: ["exits": 1000, "mmio_exits": 10, "traced_userspace_exits": 5, HostVMs.Stat.tracedMemoryFaults: 2])
        let vmmLater = HostVMs.Sample(pid: 100, directory: "100-11", name: "vmscope", vcpus: 2,
                                      stats: ["exits": 3000, "mmio_exits": 30, "traced_userspace_exits": 9, HostVMs.Stat.tracedMemoryFaults: 8])
        let qemu = HostVMs.Sample(pid: 200, directory: "200-12", name: "guest", vcpus: 1, stats: [:],
                                  countersMissing: "KVM's counters unreadable: debugfs refuses it: Operation not permitted")
        return HostVMs.rows(before: [vmm, qemu], after: [vmmLater, qemu], intervalNs: 1_000_000_000)
    }

    @Test func aDashIsExplainedAndTheSortColumnMarked() {
        var view = TopView()
        view.rows = Self.rows()
        let screen = view.render(width: 200, height: 10).text
        let lines = screen.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[1].contains("▼EXITS/s") && !lines[1].contains("▼MMIO/s"), "\(lines[1])")
        #expect(lines.contains { $0.hasPrefix("- : pid 200: KVM's counters unreadable: debugfs refuses it") }, "\(screen)")
        _ = view.handle(.char("s"))
        let sorted = view.render(width: 200, height: 10).text.split(separator: "\n").map(String.init)
        #expect(sorted[1].contains("▼MMIO/s") && !sorted[1].contains("▼EXITS/s"), "\(sorted[1])")
        view.ascii = true
        #expect(view.render(width: 200, height: 10).text.contains("vMMIO/s"))
        // A kernel that does not trace conversions: PRIV's dash says why.
        view.rows = Array(Self.rows().prefix(1))
        #expect(TopView.dashLegend(view.shown)?.hasPrefix("- in PRIV: this kernel does not trace conversions") == true)
        // No row with a dash: no legend.
        view.rows[0].sample.stats[HostVMs.Stat.tracedPrivateBytes] = 1 << 20
        #expect(TopView.dashLegend(view.shown) == nil)
    }

    /// Issue 29: memory-fault exits a second per VM, from the traced exits to userspace (KVM_EXIT_MEMORY_FAULT).
    @Test func memoryFaultExitsHaveAColumn() throws {
        let rows = Self.rows()
        let header = TopView.columns
        let end = try #require(header.range(of: "MEMFLT/s")).upperBound
        let column = header.distance(from: header.startIndex, to: end)
        let vmm = TopView.line(rows[0]), qemu = TopView.line(rows[1])
        #expect(String(vmm.prefix(column)).hasSuffix(" 6"), "\(header)\n\(vmm)")
        #expect(String(qemu.prefix(column)).hasSuffix(" -"), "\(header)\n\(qemu)")
    }

    /// Issue 29: the private memory the trace saw converted, per VM (a lower bound, marked ≥), or `-`.
    @Test func tracedPrivateBytesHaveAColumn() throws {
        var rows = Self.rows()
        rows[0].sample.stats[HostVMs.Stat.tracedPrivateBytes] = 360_448
        let header = TopView.columns
        let column = header.distance(from: header.startIndex, to: try #require(header.range(of: "PRIV")).upperBound)
        #expect(String(TopView.line(rows[0]).prefix(column)).hasSuffix("≥352K"), "\(header)\n\(TopView.line(rows[0]))")
        #expect(String(TopView.line(rows[1]).prefix(column)).hasSuffix(" -"))
    }
}

/// Issue 27, item 6: QEMU's injection menu offered kinds it then refused; it offers what the source can do.
struct InjectionMenuTests {
    @Test func theMenuOffersWhatTheSourceCanDo() {
        var m = ControlConsentTests.model(qemu: true)
        m.offeredInjections = [.nmi]
        var u = ui()
        u.allowControl = true
        u.fit(m, width: 160, height: 48)
        _ = u.handle(.char("i"))
        let screen = Renderer(ascii: false).render(m, u, width: 160, height: 48).text
        #expect(screen.contains("> nmi: NMI into vCPU 0") && !screen.contains("mce:") && !screen.contains("flip:"), "\(screen)")
        // The first letter of a kind not offered does nothing; Enter takes the one shown.
        #expect(u.handle(.enter) == [.act(.inject(.nmi, vcpu: 0, gpa: u.targetRange.gpa, size: u.targetRange.size))])
        // A menu left open while the source changes to one offering none closes at the next key (n was 0 in a %).
        _ = u.handle(.char("i"))
        var none = m
        none.offeredInjections = []
        u.fit(none, width: 160, height: 48)
        #expect(u.handle(.char("j")).isEmpty && u.overlay == nil)
        // vmscope's VMM offers all five.
        var own = ui()
        own.fit(ControlConsentTests.model(qemu: false), width: 160, height: 48)
        _ = own.handle(.char("i"))
        let all = Renderer(ascii: false).render(ControlConsentTests.model(qemu: false), own, width: 160, height: 48).text
        #expect(["mce:", "nmi:", "discard:", "revoke:", "flip:"].allSatisfy { all.contains($0) }, "\(all)")
    }
}

/// Issue 27, item 10: the hex dump showed the first 256 bytes of the page and any key closed it.
struct HexDumpScrollTests {
    @Test func theDumpScrollsOverTheWholePageAndClosesWithQ() {
        let m = ControlConsentTests.model(qemu: false)
        var u = ui()
        u.fit(m, width: 120, height: 30)
        let bytes = (0..<4096).map { UInt8($0 / 16 & 0xFF) }
        u.overlay = .hexDump(gpa: 0x100000, bytes: bytes)
        func shown() -> String { Renderer(ascii: false).render(m, u, width: 120, height: 30).text }
        #expect(shown().contains("0x00100000  00 00") && shown().contains("bytes 0-"), "\(shown())")
        _ = u.handle(.pageDown)
        #expect(shown().contains("0x00100100  10 10") && shown().contains("bytes 256-"), "\(shown())")
        _ = u.handle(.char("G"))
        #expect(shown().contains("0x00100ff0  ff ff") && shown().contains("-4095 of 4096"), "\(shown())")
        _ = u.handle(.char("a"))
        #expect(u.overlay != nil, "a key that means nothing here leaves it open")
        _ = u.handle(.char("q"))
        #expect(u.overlay == nil)
    }
}

/// Issue 27, item 9: the demo's bottom line kept its socket path where attach, replay and top show key hints.
struct StartNoteTests {
    @Test func theNoteGivesTheLineBackToTheKeyHintsAtTheFirstKey() throws {
        let m = ControlConsentTests.model(qemu: false)
        var u = ui()
        u.status = ("demo VM socket: /tmp/x/vm.sock (for vmscope ctl, snapshot, record)", false)
        u.noteUntilKey = true
        #expect(Renderer().render(m, u, width: 160, height: 48).lines.last?.hasPrefix("demo VM socket") == true)
        _ = u.handle(.char("j"))
        let last = Renderer().render(m, u, width: 160, height: 48).lines.last ?? ""
        #expect(last.hasPrefix("? help") && last.contains("q quit"), "\(last)")
        // A key's own message stays.
        _ = u.handle(.char("t"))
        #expect(u.status?.text.hasPrefix("theme") == true)
    }
}
