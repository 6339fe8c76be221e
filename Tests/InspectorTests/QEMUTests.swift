@testable import Schema
import ControlProtocol
import Foundation
import Testing
@testable import Inspector

/// Text QEMU 7.2 printed, kept byte for byte (CRLF line ends included).
func qemuFixture(_ name: String) throws -> String {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)")
    return try String(contentsOf: url, encoding: .utf8)
}

/// A QEMU that answers from a table, recording what it was asked.
final class CannedQEMU: @unchecked Sendable {
    var replies: [String: JSON]
    var asked: [String] = []
    init(_ replies: [String: JSON]) { self.replies = replies }

    func execute(_ name: String, _ args: JSON?) throws -> JSON {
        let key = name == "human-monitor-command" ? "hmp:" + (args?["command-line"]?.stringValue ?? "")
            : name == "query-stats" ? "stats:" + (args?["target"]?.stringValue ?? "")
            : name == "qom-get" ? "qom:" + (args?["path"]?.stringValue ?? "") + "." + (args?["property"]?.stringValue ?? "") : name
        asked.append(key)
        guard let r = replies[key] else { throw ControlClientError.command(errorClass: "CommandNotFound", desc: "no \(key)") }
        return r
    }

    static func greeting(_ major: Int, _ minor: Int) throws -> JSON {
        try JSON.parse(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": \#(minor), "major": \#(major)}, "package": ""}, "capabilities": ["oob"]}}"#)
    }
}

struct QEMUParserTests {
    @Test func flatViewKeepsTheMemoryAddressSpaceAndMarksKVMRanges() throws {
        let text = try qemuFixture("qemu72-q35-dimm-mtree.txt")
        #expect(text.contains("\r\n"), "the fixture keeps QEMU's CRLF line ends")
        let ranges = QEMUText.flatView(text)
        let kvm = ranges.filter(\.kvm)
        #expect(kvm.map(\.start) == [0, 0xc3000, 0xe8000, 0xf0000, 0x100000, 0xfffc0000, 0x1_0000_0000, 0x1_4000_0000])
        #expect(kvm.map(\.size) == [0xc3000, 0x25000, 0x8000, 0x10000, 0x7ff0_0000, 0x40000, 0x4000_0000, 0x1000_0000])
        #expect(kvm.map(\.name) == ["pc.ram", "pc.ram", "pc.ram", "pc.ram", "pc.ram", "pc.bios", "pc.ram", "m1"])
        #expect(kvm.map(\.offset) == [nil, 0xc3000, 0xe8000, 0xf0000, 0x100000, nil, 0x8000_0000, nil])
        #expect(kvm.map(\.type) == ["ram", "rom", "ram", "rom", "ram", "rom", "ram", "ram"])
        // Device MMIO in the same view is there, but not KVM-mapped; the I/O address space is not read at all.
        #expect(ranges.contains { $0.name == "kvm-ioapic" && !$0.kvm })
        #expect(!ranges.contains { $0.name == "kvm-pic" || $0.name == "dma-chan" })
    }

    @Test func flatViewSkipsWhatItCannotRead() {
        let text = "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  zzzz-0fff (prio 0, ram): x KVM\n  0000-0fff garbage\n  1000-0fff (prio 0, ram): backwards KVM\n  2000-2fff (prio 0, ram): ok KVM\n"
        #expect(QEMUText.flatView(text).map(\.name) == ["ok"])
        #expect(QEMUText.flatView(text, addressSpace: "I/O").isEmpty)
    }

    @Test func registersOf32BitCodeMapOntoTheRegisterModel() throws {
        let cpus = QEMUText.registers(try qemuFixture("qemu72-pc-registers.txt"))
        #expect(cpus.keys.sorted() == [0, 1])
        let c1 = try #require(cpus[1])
        // CPU#1 of that capture: EAX=000f49f6 … EIP=000fd09a EFL=00000002, CS =0008, CR0=00000011, HLT=1.
        #expect(c1.general["rax"] == 0xf49f6 && c1.general["rcx"] == 0x2ff && c1.general["rdx"] == 1)
        #expect(c1.general["rsp"] == 0x6c5c && c1.general["rip"] == 0xfd09a && c1.general["rflags"] == 2)
        #expect(c1.selectors == ["cs": 8, "ds": 0x10, "es": 0x10, "fs": 0x10, "gs": 0x10, "ss": 0x10])
        #expect(c1.control == ["cr0": 0x11, "cr2": 0, "cr3": 0, "cr4": 0, "efer": 0])
        #expect(c1.halted)
        #expect(c1.orderedGeneral.map(\.0) == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "rflags"])
        #expect(cpus[0]?.selectors["cs"] == 0xf000 && cpus[0]?.selectors["es"] == 0xd980)
    }

    @Test func registersOf64BitCodeIncludingPaddedNames() {
        // QEMU's long-mode layout (target/i386/cpu-dump.c): short names padded before '='.
        let text = """
            \r\nCPU#0\r\nRAX=ffffffff81000000 RBX=0000000000000001 RCX=0000000000000002 RDX=0000000000000003\r
            RSI=0000000000000004 RDI=0000000000000005 RBP=0000000000000006 RSP=ffffc90000003f00\r
            R8 =0000000000000008 R9 =0000000000000009 R10=000000000000000a R11=000000000000000b\r
            R12=000000000000000c R13=000000000000000d R14=000000000000000e R15=000000000000000f\r
            RIP=ffffffff81e0c2a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r
            CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\r
            CR0=80050033 CR2=00007f0000000000 CR3=000000000260a000 CR4=00350ef0\r
            EFER=0000000000000d01\r\n
            """
        let c = QEMUText.registers(text)[0]
        #expect(c?.general["rax"] == 0xffff_ffff_8100_0000 && c?.general["r8"] == 8 && c?.general["r9"] == 9 && c?.general["r15"] == 15)
        #expect(c?.general["rip"] == 0xffff_ffff_81e0_c2a4 && c?.general["rflags"] == 0x246)
        #expect(c?.selectors["cs"] == 0x10 && c?.control["cr2"] == 0x7f00_0000_0000 && c?.control["efer"] == 0xd01)
        #expect(c?.halted == false)
        #expect(c?.orderedGeneral.count == 18)
    }

    @Test func memoryDumpStopsAtQEMUsError() {
        let ok = QEMUText.memoryDump("\r\n00000000000f0000: 0x43 0x24 0x83\r\n00000000000f0003: 0xc4\r\n")
        #expect(ok.bytes == [0x43, 0x24, 0x83, 0xc4] && ok.error == nil)
        let bad = QEMUText.memoryDump("0000000000000000: 0x01 0x02\r\n0000007ffffffff0: Cannot access memory\r\n")
        #expect(bad.bytes == [1, 2] && bad.error == "Cannot access memory")
    }

    @Test func statsAreKeyedByQOMPathWithHistogramsLeftOut() throws {
        let reply = try JSON.parse(#"""
            [{"provider":"kvm","qom-path":"/machine/unattached/device[2]","stats":[{"name":"exits","value":20},{"name":"guest_mode","value":false},{"name":"halt_wait_hist","value":[1,2]}]},
             {"provider":"kvm","qom-path":"/machine/unattached/device[0]","stats":[{"name":"exits","value":8962},{"name":"blocking","value":true}]}]
            """#)
        let s = QEMUQMP.kvmStatsByPath(reply)
        #expect(s["/machine/unattached/device[2]"]?.map(\.0) == ["exits", "guest_mode"])
        #expect(s["/machine/unattached/device[0]"]?.map(\.1) == [8962, 1])
    }
}

struct QEMUPollerTests {
    func canned(status: String = "running", major: Int = 7, minor: Int = 2) throws -> (QEMUPoller, CannedQEMU) {
        let q = CannedQEMU([
            "query-name": try JSON.parse(#"{"name": "web1"}"#),
            "query-kvm": try JSON.parse(#"{"enabled": true, "present": true}"#),
            "query-status": try JSON.parse(#"{"status": "\#(status)", "running": \#(status == "running"), "singlestep": false}"#),
            "query-cpus-fast": try JSON.parse(#"""
                [{"thread-id": 3546, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"},
                 {"thread-id": 3547, "qom-path": "/machine/unattached/device[2]", "cpu-index": 1, "target": "x86_64"}]
                """#),
            "query-memory-size-summary": try JSON.parse(#"{"base-memory": 3221225472, "plugged-memory": 268435456}"#),
            "hmp:info mtree -f": .string(try qemuFixture("qemu72-q35-dimm-mtree.txt")),
            "hmp:info registers -a": .string(try qemuFixture("qemu72-pc-registers.txt")),
            "stats:vcpu": try JSON.parse(#"""
                [{"provider":"kvm","qom-path":"/machine/unattached/device[2]","stats":[{"name":"exits","value":20},{"name":"io_exits","value":3}]},
                 {"provider":"kvm","qom-path":"/machine/unattached/device[0]","stats":[{"name":"exits","value":8962},{"name":"halt_exits","value":732}]}]
                """#),
            "stats:vm": try JSON.parse(#"[{"provider":"kvm","stats":[{"name":"pages_4k","value":12}]}]"#),
            "query-target": try JSON.parse(#"{"arch": "x86_64"}"#),
            "qom:/machine.type": .string("pc-q35-7.2-machine"),
            "query-machines": try JSON.parse(#"""
                [{"name": "pc-i440fx-7.2", "alias": "pc", "cpu-max": 255}, {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288},
                 {"name": "pc-q35-7.1", "cpu-max": 288}]
                """#),
            // As QEMU 7.2 printed it for the fixture's DIMM (addr 0x140000000, 256 MiB), plus a hot-plugged one
            // and a virtio-mem device (memaddr, max-size) whose ranges the fixture's map does not have.
            "query-memory-devices": try JSON.parse(#"""
                [{"type": "dimm", "data": {"memdev": "/objects/m1", "hotplugged": false, "addr": 5368709120, "hotpluggable": true,
                  "size": 268435456, "slot": 0, "node": 0, "id": "dimm1"}},
                 {"type": "dimm", "data": {"memdev": "/objects/m2", "hotplugged": true, "addr": 5637144576, "hotpluggable": true,
                  "size": 67108864, "slot": 1, "node": 0, "id": "dimm2"}},
                 {"type": "virtio-mem", "data": {"memaddr": 8589934592, "size": 0, "max-size": 1073741824, "block-size": 2097152,
                  "node": 0, "requested-size": 0, "memdev": "/objects/vm0", "id": "vmem0"}}]
                """#),
        ])
        return (QEMUPoller(greeting: try CannedQEMU.greeting(major, minor)), q)
    }

    @Test func startFillsEveryViewQEMUHasASourceFor() throws {
        var (source, q) = try canned()
        var m = InspectorModel()
        try source.start(q.execute, model: &m, nowNs: 1)
        #expect(m.vm.name == "web1" && m.vm.qemuVersion == "QEMU 7.2.0" && m.vm.accelerator == "kvm" && m.vm.runState == "running")
        #expect(m.vm.ramSize == 3_489_660_928 && m.vm.vcpus == 2)
        #expect(m.memslots.count == 8 && m.memslots.allSatisfy { !$0.slotKnown })
        #expect(m.memslots.last?.regionName == "m1" && m.memslots[6].regionOffset == 0x8000_0000)
        // The DIMM's range is named by its device (matched by address); RAM and ROM belong to no device.
        #expect(m.memslots.last?.device == "dimm dimm1" && m.memslots.dropLast().allSatisfy { $0.device == nil })
        #expect(m.vm.machine == "pc-q35-7.2 (q35)" && m.vm.arch == "x86_64")
        // Stats are matched to vCPUs by qom-path, not by reply order.
        #expect(m.vcpus.map(\.index) == [0, 1] && m.vcpus.map(\.threadID) == [3546, 3547])
        #expect(m.vcpus[0].totalExits == 8962 && m.vcpus[1].totalExits == 20)
        #expect(m.vcpus[1].exitCounts.map(\.0) == ["io_exits"])
        #expect(m.vcpus[1].registers.first { $0.0 == "rip" }?.1 == 0xfd09a)
        #expect(m.vcpus.map(\.state) == ["halted", "halted"], "HLT=1 in the capture")
        #expect(m.vmStats.map(\.0) == ["pages_4k"])
        #expect(m.unavailable[.map]?.contains("QEMU 7.2.0: no guest_memfd") == true)
        #expect(m.unavailable[.faults]?.contains("fault stream unavailable") == true)
        #expect(m.unavailable[.memslots] == nil && m.unavailable[.vcpus] == nil)
    }

    @Test func aStoppedVMShowsItsVCPUsPausedAndEventsMakeThePollComeAtOnce() throws {
        var (source, q) = try canned(status: "paused")
        var m = InspectorModel()
        try source.start(q.execute, model: &m, nowNs: 1)
        #expect(m.vcpus.map(\.state) == ["paused", "paused"] && m.vm.runState == "paused")
        q.asked = []
        #expect(try source.poll(q.execute, model: &m, nowNs: 500_000_000) == false, "nothing due yet")
        #expect(q.asked.isEmpty)
        q.replies["query-status"] = try JSON.parse(#"{"status": "running", "running": true}"#)
        source.apply(event: try JSON.parse(#"{"event": "RESUME", "data": {}}"#), model: &m)
        #expect(try source.poll(q.execute, model: &m, nowNs: 600_000_000))
        #expect(m.vm.runState == "running" && q.asked.contains("hmp:info registers -a"))
        #expect(!q.asked.contains("hmp:info mtree -f"), "memory is polled on its own, slower clock")
    }

    @Test func aPausedVMIsAskedOnlyForItsRunStateBetweenSlowPolls() throws {
        var (source, q) = try canned(status: "paused")
        var m = InspectorModel()
        try source.start(q.execute, model: &m, nowNs: 1)
        q.asked = []
        #expect(try source.poll(q.execute, model: &m, nowNs: 1_100_000_000))
        #expect(q.asked == ["query-status"], "registers and stats of a paused VM do not move")
        q.asked = []
        try source.poll(q.execute, model: &m, nowNs: 5_200_000_000)
        #expect(Set(q.asked) == ["hmp:info mtree -f", "query-memory-devices", "query-memory-size-summary", "query-cpus-fast", "stats:vm", "query-status",
                                 "hmp:info registers -a", "stats:vcpu"], "the slow poll reads everything")
        // Running again: registers and vCPU stats every second, the rest stays on the slow clock.
        q.replies["query-status"] = try JSON.parse(#"{"status": "running", "running": true}"#)
        q.asked = []
        try source.poll(q.execute, model: &m, nowNs: 6_300_000_000)
        #expect(q.asked == ["query-status", "hmp:info registers -a", "stats:vcpu"])
    }

    @Test func aPollThatCostsQEMUMoreThanItsBudgetIsSpacedFurtherApart() throws {
        var (source, q) = try canned()
        // A clock that moves only while QEMU "answers": 2 ms a command, 30 ms for the registers of many vCPUs.
        final class FakeClock: @unchecked Sendable { var ns: UInt64 = 0 }
        let clock = FakeClock()
        source.clock = { clock.ns }
        let execute: QEMUPoller.Execute = { name, args in
            clock.ns += args?["command-line"]?.stringValue == "info registers -a" ? 30_000_000 : 2_000_000
            return try q.execute(name, args)
        }
        var m = InspectorModel()
        try source.start(execute, model: &m, nowNs: 1)
        // The running VM's poll (status, registers, vCPU stats) took 34 ms: 0.6% of a core is one every 5.67 s.
        #expect(source.fastSpacingNs == 5_666_666_666 && m.vm.pollIntervalNs == 5_666_666_666)
        #expect(source.slowSpacingNs == 5_000_000_000, "the slow poll's 10 ms stays within its 5 s")
        q.asked = []
        #expect(try source.poll(execute, model: &m, nowNs: 5_100_000_000), "the slow poll is due")
        q.asked = []
        #expect(try source.poll(execute, model: &m, nowNs: 8_000_000_000) == false, "not at the one-second default")
        #expect(q.asked.isEmpty)
        #expect(try source.poll(execute, model: &m, nowNs: 10_800_000_000))
        // Cheap again (a few vCPUs): back to every second.
        q.replies["hmp:info registers -a"] = .string(try qemuFixture("qemu72-pc-registers.txt"))
        source.clock = { 0 }
        try source.poll(execute, model: &m, nowNs: 30_000_000_000)
        #expect(source.fastSpacingNs == 1_000_000_000 && source.slowSpacingNs == 5_000_000_000)
        let text = Renderer().render(m, InspectorUI(), width: 200, height: 60).text
        #expect(text.contains("polled every 1.0 s"), "\(text)")
    }

    @Test func aNewerQEMUWithAConfidentialGuestSaysItsRAMIsGuestMemfd() throws {
        var (source, q) = try canned(major: 10, minor: 1)
        // /machine's confidential-guest-support link, then that object's type.
        let execute: QEMUPoller.Execute = { name, args in
            guard name == "qom-get", args?["property"]?.stringValue != "type" || args?["path"]?.stringValue != "/machine" else { return try q.execute(name, args) }
            return args?["path"]?.stringValue == "/machine" ? .string("/objects/snp0") : .string("sev-snp-guest")
        }
        var m = InspectorModel()
        try source.start(execute, model: &m, nowNs: 1)
        #expect(source.guestMemfdGuest == "sev-snp-guest")
        #expect(m.unavailable[.map]?.contains("guest_memfd-backed (confidential guest sev-snp-guest)") == true)
        #expect(m.memslots.filter { $0.backing == "ram+guest_memfd" }.count == 5, "RAM ranges, not ROM")
    }

    @Test func actionsBecomeQEMUCommandsOrAreRefusedWithTheReason() throws {
        let source = QEMUPoller(greeting: try CannedQEMU.greeting(7, 2))
        let t = source.translate
        guard case .run("stop", _, _) = t(.vcpu(index: 0, .pause)),
              case .run("cont", _, _) = t(.vcpu(index: 0, .resume)),
              case .run("inject-nmi", _, _) = t(.inject(.nmi, vcpu: 1, gpa: 0, size: 4096)),
              case .readMemory(0x2000, 4096) = t(.readMemory(gpa: 0x2000, size: 4096)) else {
            Issue.record("pause, resume, nmi and reads map onto stop, cont, inject-nmi, xp")
            return
        }
        for (action, reason) in [(InspectorAction.vcpu(index: 0, .step), "single-step"),
                                 (.inject(.mce, vcpu: 0, gpa: 0, size: 4096), "inject-nmi only"),
                                 (.convert(gpa: 0, size: 4096, to: .private), "private/shared conversion"),
                                 (.setPolicy(.pause), "fault policy")] {
            guard case .refuse(let why) = t(action) else { Issue.record("\(action) is not refused"); continue }
            #expect(why.contains("QEMU 7.2.0") && why.contains(reason), "\(why)")
        }
    }

    @Test func theRendererSaysWhatQEMUDoesNotOfferAndShowsItsRanges() throws {
        var (source, q) = try canned()
        var m = InspectorModel()
        try source.start(q.execute, model: &m, nowNs: 1)
        #expect(m.peerIsQEMU, "known from the version start() read")
        m.connection = .connected("QEMU 7.2.0")
        let text = Renderer().render(m, InspectorUI(), width: 200, height: 60).text
        #expect(text.contains("no guest_memfd") && text.contains("predates KVM_EXIT_MEMORY_FAULT") && text.contains("stream unavailable"), "\(text)")
        #expect(text.contains("QEMU 7.2.0 kvm") && text.contains("status running"))
        #expect(!text.contains("engine") && !text.contains("no faults yet"), "no vmscope-only words")
        #expect(text.contains("0x100000000-0x140000000") && text.contains("pc.ram @0x80000000"), "\(text)")
        #expect(text.contains("0x140000000-0x150000000") && text.contains(" m1 · dimm dimm1"), "\(text)")
        #expect(text.contains("pc-q35-7.2 (q35) x86_64"), "machine and target in the status bar")
        #expect(text.contains("P stop/cont VM") && !text.contains("s/p convert"), "the key line offers what QEMU does")
        #expect(text.contains("thread") && text.contains("  3546") && text.contains("  3547"), "query-cpus-fast's thread ids")
    }

    @Test func aMemoryDeviceIsFoundByAddressWhateverItsKind() throws {
        let devices = QEMUQMP.MemoryDevice.list(try JSON.parse(#"""
            [{"type": "dimm", "data": {"addr": 4294967296, "size": 134217728, "id": "dimm1", "hotplugged": true, "memdev": "/objects/m1"}},
             {"type": "virtio-mem", "data": {"memaddr": 8589934592, "size": 0, "max-size": 1073741824, "id": "vmem0", "memdev": "/objects/vm0"}},
             {"type": "nvdimm", "data": {"addr": 17179869184, "size": 4096, "memdev": "/objects/nv"}}]
            """#))
        func range(_ start: UInt64, _ size: UInt64) -> QEMUText.FlatRange {
            QEMUText.FlatRange(start: start, size: size, type: "ram", name: "x", offset: nil, kvm: true)
        }
        #expect(QEMUPoller.memoryDevice(containing: range(1 << 32, 128 << 20), devices) == "dimm dimm1, hotplugged")
        #expect(QEMUPoller.memoryDevice(containing: range((1 << 32) + 4096, 4096), devices) == "dimm dimm1, hotplugged", "part of it")
        #expect(QEMUPoller.memoryDevice(containing: range((1 << 32) + 4096, 128 << 20), devices) == nil, "runs past its end")
        #expect(QEMUPoller.memoryDevice(containing: range(8 << 30, 512 << 20), devices) == "virtio-mem vmem0", "within max-size")
        #expect(QEMUPoller.memoryDevice(containing: range(16 << 30, 4096), devices) == "nvdimm", "no id: the kind alone")
        #expect(QEMUPoller.memoryDevice(containing: range(0, 4096), devices) == nil)
    }
}
