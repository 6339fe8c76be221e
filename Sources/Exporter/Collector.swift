import ControlProtocol
import Foundation
import HostTracing
import Logging
import Schema

/// One collection pass over every KVM VM on the host, as `vmscope top` sees them (KVM's debugfs, the vCPU statistics
/// files each VMM holds, exits to userspace from tracepoints), with each vmscope VMM's own `query-metrics` over its
/// control socket.
public final class HostCollector: @unchecked Sendable {
    // @unchecked: one collector thread uses it.
    private let traced: HostVMs.TracedCounts?
    /// Each VM's statistics files and names, kept from one collection to the next.
    private let sampleCache = HostVMs.SampleCache()
    /// Why exits to userspace are not traced (nil when they are).
    public let tracedUnavailable: String?
    private let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
        (traced, tracedUnavailable) = HostVMs.TracedCounts.start()
    }

    public func close() {
        traced?.session.close()
        for kept in connections.values { kept.client.close() }
        connections = [:]
    }

    /// The VMM behind a process, from its command name (/proc/PID/comm).
    static func kind(command comm: String) -> VMMKind {
        if comm.hasPrefix("qemu") { return .qemu }
        if comm.hasPrefix("vmscope") { return .vmscope }
        return .other
    }

    /// Reads every VM once. Throws only when KVM's debugfs cannot be read at all.
    public func collect(store: MetricsStore) throws(TraceError) -> [VMReading] {
        let samples = try HostVMs.sample(traced: traced, cache: sampleCache)
        var byPid: [Int32: VMReading] = [:]
        for s in samples {
            var stats = s.stats
            stats[HostVMs.Stat.tracedUserspaceExits] = nil
            stats[HostVMs.Stat.tracedMMIO] = nil
            stats[HostVMs.Stat.tracedPrivateBytes] = nil
            if var r = byPid[s.pid] {
                // Two VMs in one process: one set of series, summed.
                r.vcpus += s.vcpus
                for (k, v) in stats { r.kvmStats[k, default: 0] &+= v }
                byPid[s.pid] = r
                continue
            }
            var r = VMReading(pid: s.pid, name: s.name, vmm: Self.kind(command: s.command), vcpus: s.vcpus, residentBytes: s.rssBytes,
                              kvmStats: stats)
            if let traced {
                r.userspaceExits = traced.userspaceExitsByReason(s.pid)
                r.tracedMemoryFaults = traced.userspaceExits(s.pid, reason: .memoryFault)
                if traced.tracesConversions {
                    r.tracedConversionSteps = traced.takeConversionSteps(s.pid)
                    r.tracedPrivateBytes = traced.privateBytes(s.pid)
                    r.tracedStepsDropped = traced.stepsDropped(s.pid)
                }
            }
            if r.vmm == .vmscope {
                // A vmscope VMM's exits and faults are its own counts, since it started. A pass where it does not
                // answer leaves those series as they were: the tracepoints' counts (since the exporter started)
                // would make them jump back and forth.
                r.userspaceExits = nil
                r.tracedMemoryFaults = nil
                if let socket = s.controlSocket, let m = vmmMetrics(pid: s.pid, socket: socket, store: store) {
                    r.vmmMetrics = m
                    var exits: [String: UInt64] = [:]
                    for cpu in m.vcpus { for (k, v) in cpu.exits { exits[k, default: 0] &+= v } }
                    r.userspaceExits = exits
                }
            }
            byPid[s.pid] = r
        }
        forgetConnections(except: Set(byPid.keys))
        return byPid.values.sorted { $0.pid < $1.pid }
    }

    /// Connections kept to vmscope VMMs, by pid, with the socket each is to.
    private var connections: [Int32: (socket: String, client: ControlClient)] = [:]

    /// `query-metrics` from the vmscope VMM `pid` over its control socket; nil when it names no socket or does not
    /// answer. The connection is kept from pass to pass with its events off (`set-events`): a connected client is
    /// otherwise sent every event (fault batches by the thousand), which the exporter would only parse to throw
    /// away. A VMM that does not know `set-events` (older) gets a connection per pass, as it did before.
    private func vmmMetrics(pid: Int32, socket: String, store: MetricsStore) -> VMMetrics? {
        if let kept = connections[pid], kept.socket != socket {
            kept.client.close()
            connections[pid] = nil
        }
        let kept = connections[pid]?.client
        let c: ControlClient
        do { c = try kept ?? ControlClient(path: socket, timeoutMs: 1000, eventCapacity: 16) } catch {
            logger.debug("query-metrics of \(pid): cannot connect: \(error)")
            return nil
        }
        do {
            let metrics = try c.run(QueryMetrics(conversionTimesAfter: store.conversionTimesSeen(pid: pid)), timeoutMs: 1000)
            if kept == nil {
                if (try? c.run(SetEvents(enabled: false), timeoutMs: 1000)) != nil { connections[pid] = (socket, c) } else { c.close() }
            }
            return metrics
        } catch {
            logger.debug("query-metrics of \(pid) failed: \(error)")
            c.close()
            connections[pid] = nil
            // A kept connection may have ended in between (the VMM restarted on the same socket): once afresh.
            return kept == nil ? nil : vmmMetrics(pid: pid, socket: socket, store: store)
        }
    }

    /// Closes the connections to VMMs that are gone (`live`: the pids of this pass).
    private func forgetConnections(except live: Set<Int32>) {
        for (pid, kept) in connections where !live.contains(pid) {
            kept.client.close()
            connections[pid] = nil
        }
    }
}
