import ControlProtocol
import Foundation
import ProcessSupport
import Schema
import Testing
@testable import HostTracing

/// True inside the nested lab (its init puts `vmscope.job=` on the kernel command line).
let insideLab: Bool = (try? String(contentsOfFile: "/proc/cmdline", encoding: .utf8))?.contains("vmscope.job=") ?? false

/// Tracing a stock QEMU where KVM is kvm_amd with nested paging, so `kvm_exit` and `kvm_page_fault` fire (under this
/// host's PVM they do not). These run inside the lab only: `LabTests.hostTracingInsideTheLab` runs this bundle there.
@Suite(.serialized, .enabled(if: insideLab, "runs inside the nested lab only (LabTests.hostTracingInsideTheLab)"))
struct InLabTests {
    /// QEMU's own per-vCPU `exits` statistic (query-stats), summed over its vCPUs.
    static func exits(_ client: ControlClient) throws -> UInt64 {
        let reply = try client.execute("query-stats", .object([
            ("target", .string("vcpu")), ("providers", .array([.object([("provider", .string("kvm")), ("names", .array([.string("exits")]))])])),
        ]))
        var sum: UInt64 = 0
        for vcpu in reply.arrayValue ?? [] {
            for stat in vcpu["stats"]?.arrayValue ?? [] where stat["name"]?.stringValue == "exits" { sum += stat["value"]?.uint64Value ?? 0 }
        }
        return sum
    }

    /// The acceptance check: over a window, the trace source's kvm_exit count equals the change in QEMU's own
    /// `exits` statistic, within the events the kernel's buffer dropped (counted). The window is exact: QEMU starts
    /// paused (-S), the statistic is read, tracing starts, `cont`, 2 s, `stop` (whose kick is one more exit, in
    /// both), the statistic is read again, and the buffers are drained.
    @Test func traceCountsTheExitsQEMUsStatisticsCount() throws {
        let qemu = try QEMUInstance(arguments: ["-S", "-m", "32", "-nodefaults", "-no-user-config", "-smp", "2"])
        defer { qemu.stop() }
        try #require(qemu.accelerator == "kvm", "QEMU ran \(qemu.accelerator): \(qemu.fallbackReason ?? "")")
        let client = try ControlClient(path: qemu.qmpSockets[0], timeoutMs: 30_000)
        defer { client.close() }
        let before = try Self.exits(client)
        let session = try TraceSession(pid: qemu.process.pid, events: ["kvm_exit", "kvm_page_fault", "kvm_userspace_exit"])
        defer { session.close() }
        var events: [TraceEvent] = []
        _ = try client.execute("cont")
        let end = Date().addingTimeInterval(2)
        while Date() < end {
            events += session.read()
            usleep(20_000)
        }
        _ = try client.execute("stop")
        usleep(300_000)
        let after = try Self.exits(client)
        for _ in 0..<3 { events += session.read(); usleep(50_000) }
        let traced = UInt64(events.filter { if case .exit = $0.kind { true } else { false } }.count)
        let counted = after - before
        print("InLabTests: QEMU's exits statistic rose by \(counted); kvm_exit traced \(traced); dropped \(session.missed)")
        #expect(counted > 100, "SeaBIOS exits to KVM constantly (about 2000 in 2 s here, 2 vCPUs under TCG)")
        #expect(max(traced, counted) - min(traced, counted) <= session.missed,
                "traced \(traced), QEMU counted \(counted), \(session.missed) dropped")
        // Every event came from QEMU's threads, and its page faults are GPAs of nested paging.
        let threads = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(qemu.process.pid)/task")) ?? []).compactMap { Int32($0) })
        #expect(Set(events.map(\.tid)).isSubset(of: threads))
        let faults = events.compactMap { if case .pageFault(_, _, _, let code) = $0.kind { code } else { nil } }
        #expect(!faults.isEmpty && faults.allSatisfy { $0.names.contains("guest_final") || $0.names.contains("guest_page") })
    }
}
