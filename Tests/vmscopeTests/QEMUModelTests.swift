@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing
import TestSupport

@Suite(.serialized, .enabled(if: qemuAvailable, "qemu-system-x86_64 is not installed (.ci/run installs qemu-system-x86)"))
struct QEMUModelTests {
    @Test(arguments: qemuConfigurations.indices)
    func memslotsRegistersAndStatsMatchWhatQEMUSays(configuration: Int) throws {
        let config = qemuConfigurations[configuration]
        let qemu = try startQEMU(config.arguments)
        defer { qemu.stop() }
        let inspector = try ControlClient(path: qemu.qmpSockets[0])
        let checker = try ControlClient(path: qemu.qmpSockets[1])
        defer { inspector.close(); checker.close() }
        var source = QEMUPoller(greeting: inspector.greeting)
        var model = InspectorModel()
        let execute: QEMUPoller.Execute = { name, args in try inspector.execute(name, args) }
        // Let the firmware get going, then pause: memory map and registers hold still while both sides read.
        Thread.sleep(forTimeInterval: 0.5)
        try checker.execute("stop")
        var now = HostClock.monotonicNs()
        try source.start(execute, model: &model, nowNs: now, pid: inspector.serverPID)
        #expect(model.vm.pid == Int(qemu.process.pid), "QEMU's pid, from the socket's peer credentials")

        let expected = try Independent.kvmRanges(try hmp(checker, "info mtree -f"))
        #expect(expected.count >= 2, "\(config.name): KVM ranges in info mtree -f: \(expected)")
        #expect(model.memslots.map { "\(String($0.gpa, radix: 16))+\(String($0.size, radix: 16))" } == expected, "\(config.name)")
        // The machine type is the one QEMU's query-machines gives the alias the test started it with.
        let machines = try #require(try checker.execute("query-machines").arrayValue)
        let typeName = try #require(machines.first { $0["alias"]?.stringValue == config.machine }?["name"]?.stringValue)
        #expect(model.vm.machine == "\(typeName) (\(config.machine))", "\(config.name): \(model.vm.machine ?? "nil")")
        #expect(model.vm.arch == "x86_64")
        if config.name.contains("dimm") {
            #expect(model.memslots.contains { $0.regionName == "m1" && $0.size == 128 << 20 && $0.device == "dimm dimm1" }, "the DIMM's range")
            #expect(model.memslots.contains { $0.gpa == 1 << 32 && $0.regionName == "pc.ram" && $0.regionOffset != nil }, "RAM above 4 GiB, with @offset")
        }

        let cpus = try #require(try checker.execute("query-cpus-fast").arrayValue)
        #expect(cpus.count == config.vcpus)
        #expect(model.vcpus.map(\.index) == Array(0..<config.vcpus))
        // Each vCPU's host thread is the one query-cpus-fast names, and it is a thread of QEMU's process.
        for c in cpus {
            let index = try #require(c["cpu-index"]?.intValue), tid = try #require(c["thread-id"]?.intValue)
            #expect(model.vcpus.first { $0.index == index }?.threadID == tid)
            #expect(FileManager.default.fileExists(atPath: "/proc/\(qemu.process.pid)/task/\(tid)"), "vCPU \(index) thread \(tid)")
        }
        #expect(model.vcpus.allSatisfy { $0.state == "paused" }, "\(model.vcpus.map(\.state))")
        let text = try hmp(checker, "info registers -a")
        for (printed, ours) in [("EIP", "rip"), ("EAX", "rax"), ("ESP", "rsp"), ("EFL", "rflags"), ("CR0", "cr0"), ("CS", "cs")] {
            let want = try Independent.register(printed, text)
            #expect(want.count == config.vcpus, "\(printed) for every vCPU")
            for v in model.vcpus {
                let got = (v.registers + v.controlRegisters + v.segments).first { $0.0 == ours }?.1
                #expect(got == want[v.index], "\(config.name) vCPU \(v.index) \(ours): \(got.map { String($0, radix: 16) } ?? "nil") vs info registers \(want[v.index].map { String($0, radix: 16) } ?? "nil")")
            }
        }

        // Running, KVM's exit counters move between polls.
        try checker.execute("cont")
        source.apply(event: .object([("event", .string("RESUME"))]), model: &model)
        now = HostClock.monotonicNs()
        try source.poll(execute, model: &model, nowNs: now)
        let before = model.vcpus.reduce(0) { $0 + $1.totalExits }
        #expect(model.vcpus.contains { $0.state == "running" || $0.state == "halted" })
        Thread.sleep(forTimeInterval: 2)
        // Due at once (the poll's spacing stretches when QEMU is slow to answer, as under parallel tests).
        source.refreshSoon()
        #expect(try source.poll(execute, model: &model, nowNs: HostClock.monotonicNs()))
        let after = model.vcpus.reduce(0) { $0 + $1.totalExits }
        #expect(after > before, "\(config.name): KVM exits \(before) → \(after) while running")
        #expect(!model.vmStats.isEmpty, "query-stats target vm")

        if config.name.contains("dimm") {
            // Hot-plug a second DIMM: the next memory poll shows its range, still equal to info mtree -f. Paused
            // meanwhile: running, the firmware remaps its ROM areas between the poll and the check (seen under load).
            try checker.execute("stop")
            defer { _ = try? checker.execute("cont") }
            try checker.execute("object-add", .object([("qom-type", .string("memory-backend-ram")), ("id", .string("m2")), ("size", .u(64 << 20))]))
            try checker.execute("device_add", .object([("driver", .string("pc-dimm")), ("id", .string("dimm2")), ("memdev", .string("m2"))]))
            // Due at once, as above: 10 s on was not always past the poll's stretched spacing in a full run.
            source.refreshSoon()
            try source.poll(execute, model: &model, nowNs: HostClock.monotonicNs() + 10_000_000_000)
            #expect(model.memslots.contains { $0.regionName == "m2" && $0.size == 64 << 20 && $0.device == "dimm dimm2, hotplugged" },
                    "\(model.memslots.map { [$0.regionName, $0.device] })")
            #expect(model.memslots.contains { $0.regionName == "m1" && $0.device == "dimm dimm1" }, "dimm1 was there from the start")
            let now2 = try Independent.kvmRanges(try hmp(checker, "info mtree -f"))
            #expect(model.memslots.map { "\(String($0.gpa, radix: 16))+\(String($0.size, radix: 16))" } == now2)
            #expect(model.vm.ramSize == (5 << 30) + (128 << 20) + (64 << 20), "base + plugged memory")
        }
    }
}
