import ControlProtocol
import Foundation
import ProcessSupport
@testable import Schema
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

    /// A stock QEMU on KVM, 2 vCPUs, started paused (-S), and a QMP client of it.
    static func pausedQEMU() throws -> (QEMUInstance, ControlClient) {
        let qemu = try QEMUInstance(arguments: ["-S", "-m", "32", "-nodefaults", "-no-user-config", "-smp", "2"])
        do {
            try #require(qemu.accelerator == "kvm", "QEMU ran \(qemu.accelerator): \(qemu.fallbackReason ?? "")")
            return (qemu, try ControlClient(path: qemu.qmpSockets[0], timeoutMs: 30_000))
        } catch {
            qemu.stop()
            throw error
        }
    }

    /// The acceptance check: over a window, the trace source's kvm_exit count equals the change in QEMU's own
    /// `exits` statistic, within the events the kernel's buffer dropped (counted). The window is exact: QEMU starts
    /// paused (-S), the statistic is read, tracing starts, `cont`, 2 s, `stop` (whose kick is one more exit, in
    /// both), the statistic is read again, and the buffers are drained.
    @Test func traceCountsTheExitsQEMUsStatisticsCount() throws {
        let (qemu, client) = try Self.pausedQEMU()
        defer { client.close(); qemu.stop() }
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

    /// Issue 29: a stock QEMU (a VM without private memory) traced from its start shows no private page and no
    /// memory fault: its firmware's thousands of nested page faults pair with no MEMORY_FAULT exit, and where the
    /// kernel traces conversions (7.3) none is made, so the complete map is all shared.
    @Test func aStockQEMUShowsNoPrivatePageAndNoMemoryFault() throws {
        let (qemu, client) = try Self.pausedQEMU()
        defer { client.close(); qemu.stop() }
        let session = try TraceSession(pid: qemu.process.pid)
        defer { session.close() }
        // Debian's libtracefs 1.6 has per-CPU readers: the buffers stay open between reads.
        #expect(session.readsKeepBuffersOpen)
        let tracesConversions = session.layouts.events["kvm_vm_set_mem_attributes"] != nil
        // QEMU made its VM before the trace began: the map cannot be complete, but it must stay empty of private pages.
        var map = TracedAttributes(complete: !HostProcess.hasVM(pid: qemu.process.pid))
        var pairing = MemoryFaultPairing()
        var conversions = 0, memoryFaults = 0, pageFaults = 0
        _ = try client.execute("cont")
        let end = Date().addingTimeInterval(3)
        while Date() < end {
            for e in session.read() {
                if case .pageFault = e.kind { pageFaults += 1 }
                if map.apply(e) != nil { conversions += 1 }
                if pairing.apply(e, attributes: map) != nil { memoryFaults += 1 }
            }
            usleep(20_000)
        }
        print("InLabTests: stock QEMU for 3 s: \(pageFaults) page faults, \(memoryFaults) memory faults, \(conversions) conversions traced"
              + (tracesConversions ? "" : " (this kernel does not trace conversions)"))
        #expect(pageFaults > 100, "SeaBIOS's nested page faults fire")
        #expect(memoryFaults == 0 && pairing.withoutGPA == 0, "no false memory fault")
        #expect(conversions == 0 && !map.runs.contains { $0.isPrivate }, "no private page: \(map.runs.prefix(4))")
    }
}
