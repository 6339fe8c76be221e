import ControlProtocol
import Foundation
import Testing

let traceAvailable: Bool = {
    guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/kvm") else {
        print("TraceCLITests: skipped: needs root and /dev/kvm")
        return false
    }
    return true
}()

/// `vmscope trace` and `vmscope top` against real VMs on this machine (root and tracefs; skipped with the reason
/// where either is missing).
@Suite(.serialized, .enabled(if: traceAvailable, "tracing needs root and /dev/kvm"))
struct TraceCLITests {
    static func instances() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/kernel/tracing/instances")) ?? []).filter { $0.hasPrefix("vmscope-") }
    }

    /// Every vmm/MMIO fault record the VMM reports has a kvm_mmio event at the same GPA from one of its own vCPU
    /// threads; the other VM's threads never appear; the instance is gone afterwards.
    @Test func traceSeesTheVMMsMMIOFaultsAndNothingOfAnotherVM() throws {
        let vmm = try RunningVMM(["--vcpus", "2"]), other = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop(); other.stop() }
        let pid = vmm.process.processIdentifier, otherPid = other.process.processIdentifier
        let trace = try ChildOutput([Binary.url.path, "trace", String(pid), "--json", "--duration", "6s", "--events", "kvm_mmio,kvm_userspace_exit"])
        usleep(1_500_000)
        // A conversion burst: the guest's wrong-view touches become vmm/MMIO records while tracing runs.
        let client = try ControlClient(path: vmm.socket)
        defer { client.close() }
        let before = try client.run(QueryMemoryFaults(limit: 0)).total
        let result = trace.wait(seconds: 30)
        #expect(result.status == 0, "\(result.stderr)")
        let after = try client.run(QueryMemoryFaults(limit: 4096))
        let records = after.records.filter { $0.seq > before && $0.source == .vmm && $0.exit == .mmio }
        #expect(!records.isEmpty, "the guest made wrong-view touches while tracing ran")
        let events = result.stdout.split(separator: "\n").compactMap { try? JSON.parse(String($0)) }
        #expect(!events.isEmpty, "\(result.stderr)")
        let vmmThreads = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { Int($0) })
        let otherThreads = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(otherPid)/task")) ?? []).compactMap { Int($0) })
        let tids = Set(events.compactMap { $0["tid"]?.intValue })
        #expect(tids.isSubset(of: vmmThreads), "every event from the traced VMM's threads: \(tids.subtracting(vmmThreads))")
        #expect(tids.isDisjoint(with: otherThreads), "nothing from the other VM")
        let mmio = Set(events.filter { $0["event"]?.stringValue == "kvm_mmio" }.compactMap { $0["gpa"]?.uint64Value.map { $0 & ~0xFFF } })
        // Records from the traced window: their page was touched through MMIO (the record's gpa is the page).
        let window = records.filter { r in mmio.contains(r.gpa) }
        #expect(window.count * 2 >= records.count, "\(window.count) of \(records.count) records have a kvm_mmio at their page")
        #expect(Self.instances().isEmpty, "the tracefs instance is removed: \(Self.instances())")
    }

    /// A trace killed outright leaves its instance; the next start removes it.
    @Test func aStaleInstanceIsRemovedByTheNextStart() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let pid = vmm.process.processIdentifier
        let first = try ChildOutput([Binary.url.path, "trace", String(pid), "--json"])
        var up = false
        for _ in 0..<200 where !up { up = Self.instances().contains("vmscope-\(first.pid)"); if !up { usleep(50_000) } }
        #expect(up, "the trace's own instance, while it runs")
        first.kill()
        _ = first.wait(seconds: 5)
        #expect(Self.instances().contains("vmscope-\(first.pid)"), "SIGKILL leaves it")
        let second = try Binary.run(["trace", String(pid), "--duration", "0.5s"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(!Self.instances().contains("vmscope-\(first.pid)"), "the next start removed the stale instance")
        #expect(Self.instances().isEmpty)
    }

    /// `top --once --json` lists the VMs with their pids and vCPU counts, and their exit counters grow.
    @Test func topListsEveryVMWithItsPidAndVCPUs() throws {
        let a = try RunningVMM(["--vcpus", "2"]), b = try RunningVMM(["--vcpus", "3"])
        defer { a.stop(); b.stop() }
        usleep(500_000)
        func vms() throws -> [JSON] {
            let r = try Binary.run(["top", "--once", "--json", "--interval", "0.5"])
            #expect(r.status == 0, "\(r.stderr)")
            return try JSON.parse(r.stdout)["vms"]?.arrayValue ?? []
        }
        let first = try vms()
        let second = try vms()
        for (vmm, vcpus) in [(a, 2), (b, 3)] {
            let pid = Int(vmm.process.processIdentifier)
            let row1 = first.first { $0["pid"]?.intValue == pid }, row2 = second.first { $0["pid"]?.intValue == pid }
            #expect(row1?["vcpus"]?.intValue == vcpus, "\(String(describing: row1))")
            let e1 = row1?["counters"]?["exits"]?.uint64Value ?? 0, e2 = row2?["counters"]?["exits"]?.uint64Value ?? 0
            #expect(e2 > e1, "exits grow: \(e1) → \(e2)")
            #expect(row1?["name"]?.stringValue == "vmscope", "the VMM's command")
        }
    }
}

/// A child whose output is collected while it runs.
final class ChildOutput: @unchecked Sendable {
    // @unchecked: the two reader blocks each write one buffer, read only after `group` says both finished.
    let process = Process()
    let out = Pipe(), err = Pipe()
    private var stdoutData = Data(), stderrData = Data()
    private let group = DispatchGroup()
    var pid: Int32 { process.processIdentifier }

    init(_ argv: [String]) throws {
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        group.enter()
        DispatchQueue.global().async { self.stdoutData = self.out.fileHandleForReading.readDataToEndOfFile(); self.group.leave() }
        group.enter()
        DispatchQueue.global().async { self.stderrData = self.err.fileHandleForReading.readDataToEndOfFile(); self.group.leave() }
    }

    func kill() { Foundation.kill(process.processIdentifier, SIGKILL) }

    func wait(seconds: Double) -> Binary.Result {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        _ = group.wait(timeout: .now() + 5)
        return Binary.Result(status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
                             stderr: String(decoding: stderrData, as: UTF8.self))
    }
}
