import Foundation
import ControlProtocol
import HostTracing
import Logging
import ProcessSupport
import Schema
import Synchronization

/// The collector thread: a pass every `interval`, its readings applied to the store. Scrapes never wait for it
/// (they emit what the last pass set), and it never waits for a scrape.
public final class CollectionLoop: Sendable {
    private let stopped = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    /// Signalled by `stop()`: the thread sleeps on it between passes (no polling).
    private let wake = DispatchSemaphore(value: 0)

    /// Collects once now (so the first scrape finds every VM), then every `interval` seconds on its own thread;
    /// `collect` returns nil for a pass that read nothing (the series keep their values).
    public init(interval: Double, store: MetricsStore, collect: @escaping @Sendable () -> [VMReading]?) {
        @Sendable func pass() -> UInt64 {
            let start = HostClock.monotonicNs()
            if let readings = collect() {
                store.apply(readings, collectionSeconds: Double(HostClock.monotonicNs() - start) / 1e9)
            }
            return start
        }
        let first = pass()
        let thread = Thread { [self] in
            nameCurrentThread("vmscope/metrics")
            var start = first
            while !stopped.load(ordering: .relaxed) {
                let next = start + UInt64(interval * 1e9)
                let now = HostClock.monotonicNs()
                if now < next { _ = wake.wait(timeout: .now() + .nanoseconds(Int(next - now))) }
                if stopped.load(ordering: .relaxed) { break }
                start = pass()
            }
            done.signal()
        }
        thread.start()
    }

    /// Stops after the pass in progress, and waits for it.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        wake.signal()
        done.wait()
    }
}

/// What `top --metrics` and `vmm --metrics` run: a store, its collection loop, and the HTTP endpoint serving it.
public final class MetricsEndpoint: Sendable {
    public let store = MetricsStore()
    public let server: MetricsServer
    private let loop: CollectionLoop

    /// `address` as `parseListenAddress` reads it; the first pass is made before the endpoint serves.
    public init(address: String, interval: Double, logger: Logger,
                collect: @escaping @Sendable (MetricsStore) -> [VMReading]?) throws {
        let (host, port) = try parseListenAddress(address)
        let store = store
        loop = CollectionLoop(interval: interval, store: store) { collect(store) }
        do { server = try MetricsServer(host: host, port: port, store: store, logger: logger) } catch {
            loop.stop()
            throw error
        }
    }

    /// `http://HOST:PORT/metrics` as bound.
    public var url: String {
        "http://\(server.host.contains(":") ? "[\(server.host)]" : server.host):\(server.port)/metrics"
    }

    public func stop() {
        loop.stop()
        server.stop()
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
        return VMReading(pid: pid, name: name, vmm: .vmscope, vcpus: m.vcpus.count, residentBytes: ProcessSupport.residentBytes(pid: pid),
                         kvmStats: stats, userspaceExits: exits, vmmMetrics: m)
    }
}
