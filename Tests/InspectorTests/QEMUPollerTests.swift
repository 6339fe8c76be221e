@testable import Schema
import ControlProtocol
import Foundation
import Testing
@testable import Inspector

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
