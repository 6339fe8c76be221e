import Foundation
import HostTracing
import KVM
import Prometheus
import Schema
import Synchronization

/// The Prometheus registry and every VM's series in it, set from cumulative readings: a counter moves by what its
/// source's count grew since the last pass (it starts at the count first seen), a gauge takes the value read.
/// A VM that goes away has its series unregistered.
///
/// One collector thread writes; scrapes only emit the registry (swift-prometheus's registry is thread-safe).
public final class MetricsStore: Sendable {
    public let registry = PrometheusCollectorRegistry()
    /// Histogram buckets of conversion times: 1 µs to 1 s.
    public static let conversionBuckets: [Duration] = [
        .microseconds(1), .microseconds(5), .microseconds(10), .microseconds(50), .microseconds(100), .microseconds(500),
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(500),
        .seconds(1),
    ]

    /// A VM's series by metric and the values of its labels besides the VM's own (at most two: their names follow from
    /// the metric). No array: a pass looks up every series of every VM, and building and hashing each one's full
    /// label list was a third of `top --metrics`' CPU.
    private struct SeriesKey: Hashable { var metric: Metric; var first = "", second = "" }
    private struct VMSeries {
        /// The VM's own labels (pid, name, vmm), as its series have them.
        var labels: [(String, String)] = []
        var counters: [SeriesKey: (counter: Counter, last: UInt64)] = [:]
        var gauges: [SeriesKey: Gauge] = [:]
        var histogram: DurationHistogram?
        /// The traced conversion steps, by step.
        var latency: [ConversionStep: DurationHistogram] = [:]
        /// The newest conversion-time number taken from the VMM.
        var conversionTimesSeen: UInt64?
        /// Conversion times the VMM's ring let go before the exporter took them, since it first saw the VM.
        var conversionTimesMissed: UInt64 = 0
        /// Series refused (unknown names, past the cap), and their counter.
        var refused: UInt64 = 0
        var refusedCounter: (counter: Counter, last: UInt64)?
    }
    /// The most series one VM may have: its readings are a peer's (a vmscope VMM's `query-metrics`), which could
    /// name a new exit, a thousand vCPUs, every pass. 64 vCPUs of every state and every KVM statistic fit well inside.
    public static let seriesPerVM = 2048

    /// An exit count's name as KVM or vmscope's VMM give it: a KVM_EXIT name (`IO`, `EXIT_41`), `error`, or a KVM
    /// name with a short lower-case detail (`IO unassigned port`).
    public static func isExitName(_ name: String) -> Bool {
        if name == HostVMs.Stat.errorReason { return true }
        let head = name.prefix { $0 != " " }
        guard ExitReason.isKVMName(String(head)) else { return false }
        let detail = name.dropFirst(head.count)
        return detail.count <= 32 && detail.allSatisfy { $0 == " " || ("a"..."z").contains($0) }
    }
    private struct State {
        var vms: [Int32: VMSeries] = [:]
        var exporter: [SeriesKey: Gauge] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    /// The Prometheus text exposition of everything now.
    public func exposition() -> [UInt8] { registry.emitToBuffer() }

    /// The conversion-time number a VM's next `query-metrics` asks after (nil: none taken yet).
    public func conversionTimesSeen(pid: Int32) -> UInt64? { state.withLock { $0.vms[pid]?.conversionTimesSeen } }

    /// Sets every series of the VMs read in one pass, and removes the series of VMs no longer there.
    public func apply(_ readings: [VMReading], collectionSeconds: Double) {
        state.withLock { s in
            for r in readings {
                let labels = [("pid", String(r.pid)), ("name", r.name), ("vmm", r.vmm.rawValue)]
                // A VM whose name or kind changed under the same pid starts its series again under the new labels.
                if let old = s.vms[r.pid], !old.labels.elementsEqual(labels, by: ==) {
                    remove(old)
                    s.vms[r.pid] = nil
                }
                apply(r, into: &s.vms[r.pid, default: VMSeries(labels: labels)])
            }
            let present = Set(readings.map(\.pid))
            for (pid, series) in s.vms where !present.contains(pid) {
                remove(series)
                s.vms[pid] = nil
            }
            exporterGauge(.exporterVMs, &s).set(Double(readings.count))
            exporterGauge(.exporterCollectionSeconds, &s).set(collectionSeconds)
        }
    }

    private func exporterGauge(_ m: Metric, _ s: inout State) -> Gauge {
        let key = SeriesKey(metric: m)
        if let g = s.exporter[key] { return g }
        let g = registry.makeGauge(descriptor: m.descriptor, labels: [])
        s.exporter[key] = g
        return g
    }

    private func remove(_ series: VMSeries) {
        if let c = series.refusedCounter { registry.unregisterCounter(c.counter) }
        for (_, c) in series.counters { registry.unregisterCounter(c.counter) }
        for (_, g) in series.gauges { registry.unregisterGauge(g) }
        if let h = series.histogram { registry.unregisterDurationHistogram(h) }
        for (_, h) in series.latency { registry.unregisterDurationHistogram(h) }
    }

    private func apply(_ r: VMReading, into v: inout VMSeries) {
        let vm = v.labels
        func full() -> Bool { v.counters.count + v.gauges.count >= Self.seriesPerVM }
        /// The series' labels: the VM's, then up to two of its own.
        func labels(_ a: (String, String)?, _ b: (String, String)?) -> [(String, String)] { vm + [a, b].compactMap { $0 } }
        func counter(_ m: Metric, _ value: UInt64, _ a: (String, String)? = nil, _ b: (String, String)? = nil) {
            let key = SeriesKey(metric: m, first: a?.1 ?? "", second: b?.1 ?? "")
            if let i = v.counters.index(forKey: key) {
                // A count that went back (its source restarted) starts over from there.
                let (c, last) = v.counters.values[i]
                if value > last { c.increment(by: Int64(clamping: value - last)) }
                v.counters.values[i].last = value
            } else if full() {
                v.refused &+= 1
            } else {
                let c = registry.makeCounter(descriptor: m.descriptor, labels: labels(a, b))
                c.increment(by: Int64(clamping: value))
                v.counters[key] = (c, value)
            }
        }
        func gauge(_ m: Metric, _ value: Double, _ a: (String, String)? = nil, _ b: (String, String)? = nil) {
            let key = SeriesKey(metric: m, first: a?.1 ?? "", second: b?.1 ?? "")
            if let g = v.gauges[key] {
                g.set(value)
            } else if full() {
                v.refused &+= 1
            } else {
                let g = registry.makeGauge(descriptor: m.descriptor, labels: labels(a, b))
                v.gauges[key] = g
                g.set(value)
            }
        }

        gauge(.vcpus, Double(r.vcpus))
        if let rss = r.residentBytes { gauge(.residentBytes, Double(rss)) }
        if let exits = r.kvmStats[HostVMs.Stat.exits] { counter(.kvmExits, exits) }
        if let h = r.kvmStats[HostVMs.Stat.hypercalls] { counter(.kvmHypercalls, h) }
        for (stat, value) in r.kvmStats where stat.hasSuffix(HostVMs.Stat.exitsSuffix) {
            counter(.kvmExitsByReason, value, ("reason", String(stat.dropLast(HostVMs.Stat.exitsSuffix.count))))
        }
        // Names a peer gives are taken only where KVM or the protocol defines them (a VMM that invents one each pass
        // would grow the registry without bound); the others are counted as refused.
        for (reason, value) in r.userspaceExits ?? [:] {
            guard Self.isExitName(reason) else { v.refused &+= 1; continue }
            counter(.userspaceExits, value, ("reason", reason))
        }
        if let traced = r.tracedMemoryFaults {
            counter(.memoryFaultExits, traced, ("source", FaultSource.trace.rawValue), ("private", "unknown"))
        }
        if let steps = r.tracedConversionSteps, !steps.isEmpty {
            // A step's histogram looked up once a pass, not once a conversion.
            for step in ConversionStep.allCases {
                var h: DurationHistogram?
                for conversion in steps {
                    guard let ns = conversion[step] else { continue }
                    if h == nil {
                        h = v.latency[step] ?? registry.makeDurationHistogram(
                            descriptor: Metric.conversionLatency.descriptor,
                            labels: vm + [("source", FaultSource.trace.rawValue), ("step", step.rawValue)], buckets: Self.conversionBuckets)
                        v.latency[step] = h
                    }
                    h?.recordNanoseconds(Int64(clamping: ns))
                }
            }
        }
        if let bytes = r.tracedPrivateBytes { gauge(.tracedPrivateBytes, Double(bytes)) }
        if let dropped = r.tracedStepsDropped { counter(.eventsDropped, dropped, ("buffer", "conversion-steps")) }
        if let m = r.vmmMetrics {
            for f in m.memoryFaultExits {
                guard f.source.known != nil else { v.refused &+= 1; continue }
                counter(.memoryFaultExits, f.count, ("source", f.source.rawValue), ("private", String(f.isPrivate)))
            }
            for c in m.conversions {
                guard c.cause.known != nil else { v.refused &+= 1; continue }
                let direction = ("direction", c.toPrivate ? "to-private" : "to-shared"), cause = ("cause", c.cause.rawValue)
                counter(.conversionsRequested, c.requested, direction, cause)
                counter(.conversionsDone, c.done, direction, cause)
            }
            for (kind, n) in m.injections {
                guard kind.known != nil else { v.refused &+= 1; continue }
                counter(.faultInjections, n, ("kind", kind.rawValue))
            }
            counter(.eventsDropped, m.faultsDropped, ("buffer", "fault-ring"))
            gauge(.privateBytes, Double(m.privateBytes))
            gauge(.sharedBytes, Double(m.sharedBytes))
            gauge(.attributeRuns, Double(m.attributeRuns))
            gauge(.memslots, Double(m.memslots))
            for cpu in m.vcpus {
                for state in VCPURunState.allCases {
                    gauge(.vcpuState, cpu.state == state ? 1 : 0, ("vcpu", String(cpu.index)), ("state", state.rawValue))
                }
            }
            let h = v.histogram ?? registry.makeDurationHistogram(
                descriptor: Metric.conversionDuration.descriptor, labels: vm, buckets: Self.conversionBuckets)
            v.histogram = h
            // The first pass only learns where the VMM's numbering is: durations before the exporter started are
            // not replayed into it.
            if v.conversionTimesSeen != nil { for ns in m.conversionTimes.ns { h.recordNanoseconds(Int64(clamping: ns)) } }
            if v.conversionTimesSeen != nil { v.conversionTimesMissed &+= m.conversionTimes.dropped }
            counter(.eventsDropped, v.conversionTimesMissed, ("buffer", "conversion-times"))
            v.conversionTimesSeen = m.conversionTimes.last
        }
        // The refusals' own series, outside the cap, once there is one.
        if v.refused > 0 {
            let c = v.refusedCounter?.counter ?? registry.makeCounter(descriptor: Metric.seriesRefused.descriptor, labels: vm)
            c.increment(by: Int64(clamping: v.refused - (v.refusedCounter?.last ?? 0)))
            v.refusedCounter = (c, v.refused)
        }
    }
}
