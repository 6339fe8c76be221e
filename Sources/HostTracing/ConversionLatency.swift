import KVM
import Schema

/// One traced conversion with the steps the trace can time (`ConversionStep`). A conversion made by a vCPU thread
/// on its way back into the guest (after an exit to userspace, before its next `KVM_RUN`) has all three; one made by
/// another thread (an operator's command) has only `convert`, and says so by having no exit.
public struct ConversionTiming: Sendable, Equatable {
    public var conversion: TracedAttributes.Conversion
    /// The exit to userspace on the converting thread before the conversion: its reason and time (trace clock).
    public var exitReason: ExitReason?
    public var exitNs: UInt64?
    /// The thread's next `KVM_RUN` (its `sys_enter_ioctl`); nil when it was not traced (the thread exited again
    /// with no entry seen, or the VMM stopped).
    public var reenteredNs: UInt64?

    public init(conversion: TracedAttributes.Conversion, exitReason: ExitReason? = nil, exitNs: UInt64? = nil, reenteredNs: UInt64? = nil) {
        self.conversion = conversion; self.exitReason = exitReason; self.exitNs = exitNs; self.reenteredNs = reenteredNs
    }

    /// When the ioctl began: its entry, else (the trace began inside it) the attributes tracepoint.
    var startNs: UInt64? { conversion.enteredNs ?? conversion.tracedNs }

    /// How long `step` took, in ns; nil where the trace lacks either end (or the ends are out of order, which a
    /// hostile raw file can make).
    public func duration(_ step: ConversionStep) -> UInt64? {
        let (from, to): (UInt64?, UInt64?) = switch step {
        case .request: (exitNs, startNs)
        case .convert: (startNs, conversion.returnedNs)
        case .reentry: (conversion.returnedNs, reenteredNs)
        }
        guard let from, let to, to >= from else { return nil }
        return to - from
    }

    /// Exit to re-entry, where both were traced.
    public var totalNs: UInt64? {
        guard let exitNs, let reenteredNs, reenteredNs >= exitNs else { return nil }
        return reenteredNs - exitNs
    }
}

/// Pairs each traced conversion with the exit before it and the `KVM_RUN` after it on the same thread. Feed it every
/// event, with the conversion `TracedAttributes.apply` completed on that event, if any. Bounded: at most
/// `threadLimit` threads and `perThreadLimit` conversions waiting on one thread.
public struct ConversionLatencyPairing: Sendable {
    private var lastExit: [Int32: (reason: ExitReason, timeNs: UInt64)] = [:]
    private var waiting: [Int32: [ConversionTiming]] = [:]
    static let threadLimit = 4096
    static let perThreadLimit = 64

    public init() {}

    /// Events of one thread can arrive out of order across reads (a thread that moved between CPUs: one CPU's buffer is
    /// read a page later than another's), so nothing is paired against time: an exit is a conversion's only if it came
    /// before the conversion began, a `KVM_RUN` entry ends a conversion's steps only if it came after its return, and an
    /// older exit never replaces a newer one.
    public mutating func apply(_ e: TraceEvent, completed: TracedAttributes.Conversion?) -> [ConversionTiming] {
        var out: [ConversionTiming] = []
        switch e.kind {
        case .userspaceExit(let reason, _):
            if let last = lastExit[e.tid], last.timeNs > e.timeNs { break }
            // An exit with conversions still waiting (made before it): the thread re-entered without its entry traced.
            if let w = waiting[e.tid] {
                let done = w.filter { $0.conversion.returnedNs <= e.timeNs }
                out += done
                waiting[e.tid] = done.count == w.count ? nil : w.filter { $0.conversion.returnedNs > e.timeNs }
            }
            if lastExit.count >= Self.threadLimit && lastExit[e.tid] == nil { lastExit.removeAll() }
            lastExit[e.tid] = (reason, e.timeNs)
        case .ioctlEnter(_, let cmd) where cmd == UInt64(KVMIoctl.run.value):
            if let last = lastExit[e.tid], last.timeNs <= e.timeNs { lastExit[e.tid] = nil }
            if let w = waiting[e.tid] {
                var later: [ConversionTiming] = []
                for var t in w {
                    if t.conversion.returnedNs <= e.timeNs { t.reenteredNs = e.timeNs; out.append(t) } else { later.append(t) }
                }
                waiting[e.tid] = later.isEmpty ? nil : later
            }
        default:
            break
        }
        if let c = completed {
            var t = ConversionTiming(conversion: c)
            if let exit = lastExit[c.tid], exit.timeNs <= (t.startNs ?? c.returnedNs) {
                t.exitReason = exit.reason
                t.exitNs = exit.timeNs
                if waiting[c.tid] == nil && waiting.count >= Self.threadLimit { out += waiting.values.joined(); waiting.removeAll() }
                if waiting[c.tid, default: []].count >= Self.perThreadLimit { out.append(waiting[c.tid]!.removeFirst()) }
                waiting[c.tid, default: []].append(t)
            } else {
                out.append(t)
            }
        }
        return out
    }
}

extension ConversionTiming {
    /// The steps the trace timed, by step.
    public var steps: [ConversionStep: UInt64] {
        var out: [ConversionStep: UInt64] = [:]
        for step in ConversionStep.allCases { out[step] = duration(step) }
        return out
    }
}
