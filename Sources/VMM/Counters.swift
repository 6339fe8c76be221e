import Foundation
import Schema
import Synchronization

/// What an exporter counts that the fault ring and the attribute map do not keep: memory-fault exits by source and
/// direction, conversions asked for and done by cause and direction, injections by kind, and each conversion's time.
///
/// vCPU threads add to it under a short lock (no allocation once each key has been seen) and never wait on a reader.
public final class VMMCounters: Sendable {
    struct FaultKey: Hashable { var source: FaultSource, isPrivate: Bool }
    struct ConversionKey: Hashable { var cause: ConversionCause, toPrivate: Bool }
    struct State {
        var faultExits: [FaultKey: UInt64] = [:]
        var requested: [ConversionKey: UInt64] = [:]
        var done: [ConversionKey: UInt64] = [:]
        var injections: [InjectionKind: UInt64] = [:]
    }
    private let state = Mutex(State())
    /// Each conversion's duration (ns), numbered; an exporter takes those after the last it saw.
    let conversionTimes = SequencedRing<UInt64>(capacity: 4096)

    public init() {}

    /// A fault record the VMM logged: counted when it came with an exit (an injection's record has none).
    func recordFault(_ r: FaultRecord) {
        guard r.exit != .none, let source = r.source.known else { return }
        state.withLock { $0.faultExits[FaultKey(source: source, isPrivate: r.isPrivate), default: 0] &+= 1 }
    }

    func conversionRequested(_ cause: ConversionCause, toPrivate: Bool) {
        state.withLock { $0.requested[ConversionKey(cause: cause, toPrivate: toPrivate), default: 0] &+= 1 }
    }

    func conversionDone(_ cause: ConversionCause, toPrivate: Bool, durationNs: UInt64) {
        state.withLock { $0.done[ConversionKey(cause: cause, toPrivate: toPrivate), default: 0] &+= 1 }
        conversionTimes.append { _ in durationNs }
    }

    func injected(_ kind: InjectionKind) {
        state.withLock { $0.injections[kind, default: 0] &+= 1 }
    }

    /// The counters in a fixed order (sources, causes and kinds in schema order; directions private first).
    public func snapshot() -> (faultExits: [VMMetrics.FaultExits], conversions: [VMMetrics.Conversions],
                               injections: [(Open<InjectionKind>, UInt64)]) {
        let s = state.withLock { $0 }
        var faults: [VMMetrics.FaultExits] = []
        for source in FaultSource.allCases {
            for p in [true, false] {
                if let n = s.faultExits[FaultKey(source: source, isPrivate: p)] { faults.append(.init(source: .known(source), isPrivate: p, count: n)) }
            }
        }
        var conversions: [VMMetrics.Conversions] = []
        for cause in ConversionCause.allCases {
            for p in [true, false] {
                let k = ConversionKey(cause: cause, toPrivate: p)
                guard let r = s.requested[k] else { continue }
                conversions.append(.init(cause: .known(cause), toPrivate: p, requested: r, done: s.done[k] ?? 0))
            }
        }
        let injections = InjectionKind.allCases.compactMap { k in s.injections[k].map { (Open.known(k), $0) } }
        return (faults, conversions, injections)
    }

    /// Conversion times numbered after `after` (at most the ring), the newest number, and how many were let go.
    public func conversionTimes(after: UInt64?) -> VMMetrics.ConversionTimes {
        let last = conversionTimes.total
        guard let after else { return .init(last: last, ns: [], dropped: 0) }
        let r = conversionTimes.entries(after: after)
        return .init(last: last, ns: r.entries, dropped: r.dropped)
    }
}
