import Foundation
import HostTracing
import Schema
import Synchronization

/// The collector thread: a pass every `interval`, its readings applied to the store. Scrapes never wait for it
/// (they emit what the last pass set), and it never waits for a scrape.
public final class CollectionLoop: Sendable {
    private let stopped = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    /// Signalled by `stop()`: the thread sleeps on it between passes (no polling).
    private let wake = DispatchSemaphore(value: 0)

    /// Starts collecting now and every `interval` seconds; `collect` returns nil for a pass that read nothing (the
    /// series keep their values).
    public init(interval: Double, store: MetricsStore, collect: @escaping @Sendable () -> [VMReading]?) {
        let thread = Thread { [self] in
            while !stopped.load(ordering: .relaxed) {
                let start = HostClock.monotonicNs()
                if let readings = collect() {
                    store.apply(readings, collectionSeconds: Double(HostClock.monotonicNs() - start) / 1e9)
                }
                let next = start + UInt64(interval * 1e9)
                let now = HostClock.monotonicNs()
                if !stopped.load(ordering: .relaxed), now < next { _ = wake.wait(timeout: .now() + .nanoseconds(Int(next - now))) }
            }
            done.signal()
        }
        thread.name = "vmscope/metrics"
        thread.start()
    }

    /// Stops after the pass in progress, and waits for it.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        wake.signal()
        done.wait()
    }
}

extension VMReading {
    /// A vmscope VMM read in its own process (`vmscope vmm --metrics`): everything from `query-metrics`.
    public static func vmm(pid: Int32, name: String, metrics m: VMMetrics) -> VMReading {
        var stats: [String: UInt64] = [:], exits: [String: UInt64] = [:]
        for cpu in m.vcpus {
            for (k, v) in cpu.stats where k == HostVMs.Stat.exits || k == HostVMs.Stat.hypercalls || k.hasSuffix(HostVMs.Stat.exitsSuffix) {
                stats[k, default: 0] &+= v
            }
            for (k, v) in cpu.exits { exits[k, default: 0] &+= v }
        }
        return VMReading(pid: pid, name: name, vmm: .vmscope, vcpus: m.vcpus.count, residentBytes: residentBytes(pid: pid),
                         kvmStats: stats, userspaceExits: exits, vmmMetrics: m)
    }

    /// VmRSS of `pid`, from /proc.
    static func residentBytes(pid: Int32) -> UInt64? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kib * 1024
    }
}
