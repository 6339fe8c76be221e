import Foundation
import Logging
import Schema
import Synchronization

/// What the exit handlers, the injector and the façade share: the VM's memory, its fault ring and event log, its
/// counters and its fault policy, and the conversions they all make. Holds no vCPU: handlers reach theirs through
/// the `VCPUContext` of the exit they handle.
public final class VMCore: Sendable {
    public let configuration: VMMConfiguration
    public let memory: GuestMemory
    public let faults: FaultRing
    public let events: EventLog
    /// Memory-fault exits, conversions and injections counted for exporters (`query-metrics`).
    public let counters: VMMCounters
    public let logger: Logger
    /// What recording each recent vmm-engine fault cost its vCPU thread, in ns, conversion excluded: from the
    /// exit handler's start to the record in the ring (lock wait, classification, record, ring append).
    let faultEmitCost = SequencedRing<UInt64>(capacity: 4096)
    private let policyState: Mutex<FaultPolicy>

    init(configuration: VMMConfiguration, memory: GuestMemory, counters: VMMCounters, logger: Logger) {
        self.configuration = configuration
        self.memory = memory
        self.counters = counters
        self.logger = logger
        faults = FaultRing(capacity: configuration.faultRingCapacity, counters: counters)
        events = EventLog(capacity: configuration.eventLogCapacity)
        policyState = Mutex(configuration.faultPolicy)
    }

    public var faultPolicy: FaultPolicy {
        get { policyState.withLock { $0 } }
    }

    func setFaultPolicy(_ policy: FaultPolicy) { policyState.withLock { $0 = policy } }

    // MARK: Conversions

    /// A conversion with its events, under the memory lock.
    func convert(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool, cause: ConversionCause, vcpu: Int?)
        throws(VMMError) -> ConversionResult
    {
        try memory.withLock { () throws(VMMError) -> ConversionResult in
            let result = try countedConvert(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard, cause: cause)
            logEvents(conversionEvents(result, gpa: gpa, size: size, toPrivate: toPrivate, cause: cause, vcpu: vcpu))
            return result
        }
    }

    /// A conversion, counted (asked for; done, with its time) for `query-metrics`. Caller holds the memory lock.
    func countedConvert(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool, cause: ConversionCause)
        throws(VMMError) -> ConversionResult
    {
        counters.conversionRequested(cause, toPrivate: toPrivate)
        let result = try memory.convert(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard)
        counters.conversionDone(cause, toPrivate: toPrivate, durationNs: result.durationNs)
        return result
    }

    /// Logs the events of a memory change. Called with the memory lock held, so anyone who sees the new state
    /// through a query also finds its events in the log (the event log never takes the memory lock).
    func logEvents(_ list: [VMEvent]) {
        for e in list { events.append(e) }
    }

    /// The events a conversion emits: the attribute change (when runs changed), then the memslot change.
    /// `memory.generation` is read as it is now: call with the memory lock held, right after the conversion.
    func conversionEvents(_ result: ConversionResult, gpa: UInt64, size: UInt64, toPrivate: Bool,
                          cause: ConversionCause, vcpu: Int?) -> [VMEvent] {
        var out: [VMEvent] = []
        if result.runsChanged > 0 {
            out.append(.memoryAttributesChanged(gpa: gpa, size: size, isPrivate: toPrivate, cause: cause, vcpu: vcpu))
        }
        if result.memslotsChanged { out.append(.memslotsChanged(generation: memory.generation)) }
        return out
    }

    /// Runs and byte counts of `pages`; the caller holds the memory lock.
    func attributes(pages: Range<UInt64>) -> AttributeRuns {
        let counts = memory.attributes.pageCounts(pages: pages)
        return AttributeRuns(runs: memory.attributes.runs(pages: pages), privateBytes: counts.private * 4096,
                             sharedBytes: counts.shared * 4096)
    }
}
