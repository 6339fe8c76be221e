import Foundation
import HostTracing
import VMM

/// The trace source: decoding speed from a buffer of raw records laid out as the kernel writes them, and what
/// tracing costs a running guest (its heartbeat rate with tracing on against off, same run).
public func traceBenchmarks(_ sizes: BenchSizes, devicePath: String = "/dev/kvm") throws -> [BenchResult] {
    var results: [BenchResult] = []
    // 1,000,000 records alternating kvm_mmio and kvm_userspace_exit (the two PVM fires), 32 bytes each, decoded
    // with the layouts of events/kvm/*/format on kernel 6.18.
    let layouts = EventLayouts.kernel618
    let count = sizes.repetitions > 10 ? 1_000_000 : 10_000
    var buffer = [UInt8](repeating: 0, count: count * 32)
    for i in 0..<count {
        let o = i * 32
        let id: UInt16 = i % 2 == 0 ? 38 : 42
        buffer[o] = UInt8(id & 0xFF); buffer[o + 1] = UInt8(id >> 8)
        buffer[o + 4] = UInt8(i % 4 + 1)
        buffer[o + 8] = i % 2 == 0 ? 2 : 6
        buffer[o + 12] = 4
        buffer[o + 18] = UInt8(truncatingIfNeeded: i)
    }
    var sink = 0
    let reps = max(3, sizes.repetitions / 20)
    let ns = median(sample(reps) { _ in
        buffer.withUnsafeBytes { all in
            for i in 0..<count {
                let r = UnsafeRawBufferPointer(rebasing: all[(i * 32)..<(i * 32 + 32)])
                if let e = layouts.decode(r, cpu: 0, timeNs: UInt64(i)), case .mmio = e.kind { sink &+= 1 }
            }
        }
    })
    results.append(BenchResult(name: "trace-decode-events-per-s", value: Double(count) / (ns / 1e9), unit: "events/s",
                               target: .atLeast(1_000_000),
                               note: "raw kvm_mmio and kvm_userspace_exit records (kernel 6.18 layouts) → TraceEvent, \(count) events; sink \(sink % 2)"))

    // Overhead: the built-in guest's heartbeats per second, untraced and then traced by a TraceSession reading its
    // buffers the way `vmscope trace` does, same VM, same run.
    guard FileManager.default.fileExists(atPath: devicePath), getuid() == 0 else {
        results.append(BenchResult(name: "trace-heartbeat-ratio", value: .nan, unit: "×", note: "skipped: needs root and \(devicePath)"))
        return results
    }
    let seconds = sizes.repetitions > 10 ? 5.0 : 1.0
    let vm = try liveVM(devicePath: devicePath) { _ in }
    defer { vm.stop() }
    func heartbeats() -> UInt64 { vm.vmm.vcpus(withRegisters: false).reduce(0) { $0 + $1.guest.heartbeats } }
    func rate(traced: TraceSession?) -> Double {
        let start = nowNs(), h0 = heartbeats()
        while Double(nowNs() - start) < seconds * 1e9 {
            if let traced { sink &+= traced.read().count }
            usleep(20_000)
        }
        return Double(heartbeats() - h0) / (Double(nowNs() - start) / 1e9)
    }
    usleep(500_000)
    let off = rate(traced: nil)
    let baseline = BenchResult(name: "trace-off-heartbeats-per-s", value: off, unit: "/s",
                               note: "baseline: the built-in guest's heartbeats, 2 vCPUs, no tracing")
    results.append(baseline)
    do {
        let session = try TraceSession(pid: getpid())
        defer { session.close() }
        let on = rate(traced: session)
        results.append(BenchResult(name: "trace-on-heartbeats-per-s", value: on, unit: "/s", target: .atLeast(off * 0.95), baseline: baseline,
                                   note: "the same VM traced (kvm_userspace_exit, kvm_mmio, ... of this process), buffers read every 20 ms; \(session.decoded) events, \(session.missed) dropped"))
    } catch {
        results.append(BenchResult(name: "trace-on-heartbeats-per-s", value: .nan, unit: "/s", note: "skipped: \(error)"))
    }
    return results
}
