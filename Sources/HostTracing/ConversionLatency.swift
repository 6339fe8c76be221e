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
    /// What is kept of one thread: its last exit to userspace not yet followed by a `KVM_RUN` entry, and its
    /// conversions that wait for that entry.
    private struct Thread {
        var lastExit: (reason: ExitReason, timeNs: UInt64)?
        var waiting: [ConversionTiming] = []
    }
    /// By thread, reached with one hash an event (an entry is found once and changed in place; it stays when the
    /// thread re-enters, emptied). Kept as two dictionaries (exits, waiting conversions), an event took two to four.
    private var threads: [Int32: Thread] = [:]
    static let threadLimit = 4096
    static let perThreadLimit = 64

    public init() {}

    /// Where `tid` is kept, added if new; past `threadLimit` threads, all are let go first (their waiting
    /// conversions given out as they are, into `out`).
    private mutating func slot(_ tid: Int32, _ out: inout [ConversionTiming]) -> Dictionary<Int32, Thread>.Index {
        if let i = threads.index(forKey: tid) { return i }
        if threads.count >= Self.threadLimit {
            for t in threads.values { out += t.waiting }
            threads.removeAll()
        }
        threads[tid] = Thread()
        return threads.index(forKey: tid)!
    }

    /// Events of one thread can arrive out of order across reads (a thread that moved between CPUs: one CPU's buffer is
    /// read a page later than another's), so nothing is paired against time: an exit is a conversion's only if it came
    /// before the conversion began, a `KVM_RUN` entry ends a conversion's steps only if it came after its return, and an
    /// older exit never replaces a newer one.
    public mutating func apply(_ e: TraceEvent, completed: TracedAttributes.Conversion?) -> [ConversionTiming] {
        var out: [ConversionTiming] = []
        switch e.kind {
        case .userspaceExit(let reason, _):
            let i = slot(e.tid, &out)
            if let last = threads.values[i].lastExit, last.timeNs > e.timeNs { break }
            // An exit with conversions still waiting (made before it): the thread re-entered without its entry traced.
            if !threads.values[i].waiting.isEmpty {
                let w = threads.values[i].waiting
                out += w.filter { $0.conversion.returnedNs <= e.timeNs }
                threads.values[i].waiting = w.filter { $0.conversion.returnedNs > e.timeNs }
            }
            threads.values[i].lastExit = (reason, e.timeNs)
        case .ioctlEnter(_, let cmd) where cmd == Self.run:
            guard let i = threads.index(forKey: e.tid) else { break }
            if let last = threads.values[i].lastExit, last.timeNs <= e.timeNs { threads.values[i].lastExit = nil }
            if !threads.values[i].waiting.isEmpty {
                var later: [ConversionTiming] = []
                for var t in threads.values[i].waiting {
                    if t.conversion.returnedNs <= e.timeNs { t.reenteredNs = e.timeNs; out.append(t) } else { later.append(t) }
                }
                threads.values[i].waiting = later
            }
        default:
            break
        }
        if let c = completed {
            var t = ConversionTiming(conversion: c)
            if let i = threads.index(forKey: c.tid), let exit = threads.values[i].lastExit, exit.timeNs <= (t.startNs ?? c.returnedNs) {
                t.exitReason = exit.reason
                t.exitNs = exit.timeNs
                if threads.values[i].waiting.count >= Self.perThreadLimit { out.append(threads.values[i].waiting.removeFirst()) }
                threads.values[i].waiting.append(t)
            } else {
                out.append(t)
            }
        }
        return out
    }
    private static let run = UInt64(KVMIoctl.run.value)
}

extension ConversionTiming {
    /// The steps the trace timed, by step.
    public var steps: [ConversionStep: UInt64] { stepTimes.dictionary }

    /// The same, in three fields.
    public var stepTimes: ConversionStepTimes {
        var out = ConversionStepTimes()
        out[.request] = duration(.request)
        out[.convert] = duration(.convert)
        out[.reentry] = duration(.reentry)
        return out
    }
}
