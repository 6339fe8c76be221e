import KVM
import Schema

/// A memory-fault exit as the trace sees it: a `kvm_page_fault` followed on the same thread by a
/// `kvm_userspace_exit` with reason `MEMORY_FAULT` (KVM_RUN returns -EFAULT with it, by design), paired by vmscope from
/// the two events or by the kernel (`KernelPairing`).
public struct TracedMemoryFault: Sendable, Equatable {
    public var tid: Int32
    /// The exit's time (trace clock).
    public var timeNs: UInt64
    public var errno: Int32
    /// The page fault before it on the thread: nil where none fired (PVM), or the trace began between the two.
    public var gpa: UInt64?
    public var errorCode: PageFaultErrorCode?
    /// The page fault's own time (where the kernel paired them: the exit's, less the time between them it kept).
    public var pageFaultNs: UInt64?
    /// The direction wanted: the error code's `private_access` bit where hardware sets it (SEV-SNP's C-bit, added
    /// before the tracepoint); for a software-protected VM KVM adds that bit after the tracepoint from the page's
    /// attribute, which the traced map knows where it saw the page converted. nil: not known.
    public var wantsPrivate: Bool?
    /// What the traced map says of the page (nil: unknown).
    public var pageIsPrivate: Bool?
    /// Whether the kernel paired the page fault with the exit (its hist trigger) rather than vmscope from both events.
    public var pairedInKernel = false
}

/// Pairs each thread's newest `kvm_page_fault` with a `MEMORY_FAULT` exit after it. Bounded: at most `threadLimit`
/// threads are remembered (a hostile raw file may name any number).
///
/// Where the kernel pairs them (`applyKernelPaired`), the page faults never come: the kernel's paired fault comes just
/// after its exit, on the exit's thread (the exit's record is reserved in the ring buffer before its trigger runs, and
/// the trigger writes the paired fault; `KernelPairing` is used only where the exit's record is neither filtered
/// nor soft-disabled, which would have the kernel build it aside and write it after its trigger's). A MEMORY_FAULT exit
/// waits for it until the thread's next event, and goes out without a GPA then (the kernel had no page fault of the
/// thread to pair it with), or at `drain`.
public struct MemoryFaultPairing: Sendable {
    private typealias PageFault = (gpa: UInt64, code: PageFaultErrorCode, timeNs: UInt64)
    private var lastPageFault: [Int32: PageFault] = [:]
    /// The newest page fault, whichever thread's, kept out of `lastPageFault` until another thread's comes: page
    /// faults come in runs of one thread (a conversion makes a vCPU fault its pages in again one by one, 70 % of what
    /// the lab's paired tracer read), and a run then costs no hashing. `lastPageFault` may hold an older one of its
    /// thread, which it replaces.
    private var newest: (tid: Int32, fault: PageFault)?
    /// MEMORY_FAULT exits waiting for the kernel's paired fault, by thread.
    private var exitFirst: [Int32: (timeNs: UInt64, errno: Int32)] = [:]
    static let threadLimit = 4096
    /// MEMORY_FAULT exits with no page fault before them on their thread.
    public private(set) var withoutGPA: UInt64 = 0
    /// Whether an exit waits for its kernel-paired fault (`flush(tid:)` then has one to give out).
    public var awaitsKernelFault: Bool { !exitFirst.isEmpty }

    public init() {}

    /// The record, its direction from the error code or, where that does not say, the traced map.
    private static func record(tid: Int32, timeNs: UInt64, errno: Int32, _ pf: PageFault?, attributes: TracedAttributes?, kernel: Bool = false) -> TracedMemoryFault {
        let page = pf.flatMap { attributes?.isPrivate(gfn: $0.gpa >> 12) }
        return TracedMemoryFault(tid: tid, timeNs: timeNs, errno: errno, gpa: pf?.gpa, errorCode: pf?.code, pageFaultNs: pf?.timeNs,
                                 wantsPrivate: pf?.code.has("private_access") == true ? true : page, pageIsPrivate: page, pairedInKernel: kernel)
    }

    public mutating func apply(_ e: TraceEvent, attributes: TracedAttributes?) -> TracedMemoryFault? {
        switch e.kind {
        case .pageFault(_, _, let address, let code):
            if let held = newest, held.tid != e.tid {
                if lastPageFault.count >= Self.threadLimit && lastPageFault[held.tid] == nil { lastPageFault.removeAll() }
                lastPageFault[held.tid] = held.fault
            }
            newest = (e.tid, (address, code, e.timeNs))
            return nil
        case .userspaceExit(let reason, let errno) where reason == .memoryFault:
            let pf: PageFault?
            if let held = newest, held.tid == e.tid {
                pf = held.fault
                newest = nil
                lastPageFault[e.tid] = nil
            } else {
                pf = lastPageFault.removeValue(forKey: e.tid)
            }
            if pf == nil { withoutGPA &+= 1 }
            return Self.record(tid: e.tid, timeNs: e.timeNs, errno: errno, pf, attributes: attributes)
        default:
            return nil
        }
    }

    /// Kernel-paired mode: a MEMORY_FAULT exit or the kernel's paired fault (`TraceEvent.Kind.kernelPairedFault`);
    /// appends what they completed: the exit with its fault, or an earlier exit of the thread left without one. A paired
    /// fault with no exit waiting (the exit's event lost) is a record of its own: the kernel writes it only on such an
    /// exit, with the exit's errno, on its thread.
    public mutating func applyKernelPaired(_ e: TraceEvent, attributes: TracedAttributes?, into out: inout [TracedMemoryFault]) {
        switch e.kind {
        case .kernelPairedFault(_, let gpa, let code, let errno, let since):
            let exit = exitFirst.removeValue(forKey: e.tid) ?? (e.timeNs, errno)
            out.append(Self.record(tid: e.tid, timeNs: exit.timeNs, errno: exit.errno, (gpa, code, exit.timeNs &- min(since, exit.timeNs)),
                                   attributes: attributes, kernel: true))
        case .userspaceExit(let reason, let errno) where reason == .memoryFault:
            if let f = flush(tid: e.tid) { out.append(f) }
            if exitFirst.count >= Self.threadLimit { out += drain() }
            exitFirst[e.tid] = (e.timeNs, errno)
        default:
            break
        }
    }

    /// The thread's exit still waiting for its kernel-paired fault, given out without a GPA: the thread has gone on (the
    /// kernel had no page fault of it to pair).
    public mutating func flush(tid: Int32) -> TracedMemoryFault? {
        guard let exit = exitFirst.removeValue(forKey: tid) else { return nil }
        withoutGPA &+= 1
        return TracedMemoryFault(tid: tid, timeNs: exit.timeNs, errno: exit.errno, gpa: nil, errorCode: nil, pageFaultNs: nil,
                                 wantsPrivate: nil, pageIsPrivate: nil, pairedInKernel: true)
    }

    /// Every exit still waiting, oldest first (the trace ended).
    public mutating func drain() -> [TracedMemoryFault] {
        exitFirst.sorted { $0.value.timeNs < $1.value.timeNs }.compactMap { flush(tid: $0.key) }
    }
}

/// A record written as one JSON object, each member named once, in `forEachMember`: as a list (`members`), a tree
/// (`json`), or written straight into bytes (`writeJSON`), which spares the lists and the tree a tracer would make and
/// release for every event and record it prints.
public protocol JSONObjectRecord {
    func forEachMember(_ m: (JSONName, JSON) -> Void)
}

extension JSONObjectRecord {
    public var members: [(String, JSON)] {
        var m: [(String, JSON)] = []
        m.reserveCapacity(16)
        forEachMember { m.append(($0.string, $1)) }
        return m
    }

    public var json: JSON { .object(members) }

    /// The same object as `json`'s, written straight into `out`.
    public func writeJSON(to out: JSONOutput) {
        out.append(UInt8(ascii: "{"))
        var first = true
        forEachMember { name, value in
            out.member(name, value, first: first)
            first = false
        }
        out.append(UInt8(ascii: "}"))
    }
}

// MARK: `vmscope trace`'s paired records (its own output format, beside the events' in EventLayout.swift)

extension TracedMemoryFault: JSONObjectRecord {
    static let pairedFrom = JSON.array(["kvm_page_fault", "kvm_userspace_exit"].map(JSON.string))

    public func forEachMember(_ m: (JSONName, JSON) -> Void) {
        m("event", .string("memory-fault")); m("tid", .int(Int64(tid))); m(FaultRecord.Member.timeNs.jsonName, .u(timeNs))
        m("paired-from", Self.pairedFrom)
        m("gpa", gpa.map { .u($0) } ?? .null); m("gfn", gpa.map { .u($0 >> 12) } ?? .null)
        m("access", errorCode.map { .string($0.access) } ?? .null); m("error-code", errorCode.map { .u($0.rawValue) } ?? .null)
        m("wanted", wantsPrivate.map { .string($0 ? "private" : "shared") } ?? .null); m("errno", .int(Int64(errno)))
        m("page-fault-ns", pageFaultNs.map { .u($0) } ?? .null)
        m("paired-in", .string(pairedInKernel ? "kernel" : "vmscope"))
        m("missing", gpa == nil ? .string("no kvm_page_fault before it on this thread: GPA unknown") : .null)
    }

    public var line: String {
        Self.seconds(timeNs) + " tid \(tid) memory-fault "
            + (gpa.map { "gpa=0x\(String($0, radix: 16)) access=\(errorCode?.access ?? "?") wanted=\(wantsPrivate.map { $0 ? "private" : "shared" } ?? "?")" }
                ?? "gpa unknown (no kvm_page_fault before it)")
    }

    static func seconds(_ ns: UInt64) -> String {
        let s = ns / 1_000_000_000, us = (ns % 1_000_000_000) / 1000
        let frac = String(us)
        return "\(s)." + String(repeating: "0", count: 6 - frac.count) + frac
    }
}

extension TracedAttributes.Conversion: JSONObjectRecord {
    var rangeText: String {
        startGFN.map { "gfn 0x\(String($0, radix: 16))-0x\(String(endGFN ?? $0, radix: 16))" } ?? "range not traced (refused by an argument check)"
    }
    var directionText: String { toPrivate.map { $0 ? "private" : "shared" } ?? "?" }
    var errnoText: String? { errno.map { $0 == 0 ? "nonzero return" : KVMError.name(of: $0) } }

    /// The refusal in words (for a status line).
    public var refusalText: String? { errnoText.map { "\(rangeText) to \(directionText): \($0)" } }

    static let pairedFrom = JSON.array(["sys_enter_ioctl", "kvm_vm_set_mem_attributes", "sys_exit_ioctl"].map(JSON.string))

    public func forEachMember(_ m: (JSONName, JSON) -> Void) {
        m("event", .string("conversion")); m("tid", .int(Int64(tid))); m(FaultRecord.Member.timeNs.jsonName, .u(returnedNs))
        m("paired-from", Self.pairedFrom)
        m("entered-ns", enteredNs.map { .u($0) } ?? .null); m("traced-ns", tracedNs.map { .u($0) } ?? .null)
        m("start-gfn", startGFN.map { .u($0) } ?? .null); m("end-gfn", endGFN.map { .u($0) } ?? .null)
        m("to", toPrivate.map { .string($0 ? "private" : "shared") } ?? .null)
        m("result", .string(accepted ? "applied" : "refused")); m("errno", errnoText.map(JSON.string) ?? .null)
        m("changed-pages", changedPages.map { .u($0) } ?? .null)
    }

    public var line: String {
        TracedMemoryFault.seconds(returnedNs) + " tid \(tid) conversion \(rangeText) to \(directionText): "
            + (accepted ? "applied" + (changedPages.map { " (\($0) pages changed)" } ?? "") : "refused (\(errnoText ?? "?"))")
    }
}

extension GuestRequestTracker.Request.Outcome {
    /// In words, for lines and the inspector.
    public var words: String {
        switch self {
        case .pending: "pending"
        case .converted: "converted by the VMM"
        case .refused: "the VMM's conversion was refused"
        case .notConverted: "answered by the VMM without a conversion"
        case .answeredByKVM: "answered by KVM (not forwarded to the VMM)"
        case .unanswered: "no answer traced (events lost)"
        case .forwarded: "forwarded to the VMM (its conversions are not traced on this kernel)"
        }
    }
}

extension GuestRequestTracker.Request: JSONObjectRecord {
    var rangeText: String {
        gfns.map { "gfn 0x\(String($0.lowerBound, radix: 16))-0x\(String($0.upperBound, radix: 16))" }
            ?? "gpa 0x\(String(range.gpa, radix: 16)) × \(range.pages) pages of unknown size"
    }
    var directionText: String { range.toPrivate.map { $0 ? "private" : "shared" } ?? "?" }
    /// "gfn 0x100-0x101 to private", for a status line.
    public var rangeWords: String { "\(rangeText) to \(directionText)" }

    static let pairedFrom = JSON.array(["kvm_hypercall", "kvm_userspace_exit", "sys_exit_ioctl", "sys_enter_ioctl"].map(JSON.string))

    public func forEachMember(_ m: (JSONName, JSON) -> Void) {
        m("event", .string("guest-request")); m("tid", .int(Int64(tid))); m(FaultRecord.Member.timeNs.jsonName, .u(answeredNs ?? requestedNs))
        m("paired-from", Self.pairedFrom)
        m("hypercall", .string("KVM_HC_MAP_GPA_RANGE")); m("gpa", .u(range.gpa)); m("pages", .u(range.pages))
        m("page-size", range.pageSize.map { .u($0) } ?? .null); m("to", range.toPrivate.map { .string($0 ? "private" : "shared") } ?? .null)
        m("requested-ns", .u(requestedNs)); m("answered-ns", answeredNs.map { .u($0) } ?? .null)
        m("forwarded", .bool(forwarded)); m("conversions", .int(Int64(conversions))); m("refusals", .int(Int64(refusals)))
        m("outcome", .string(outcome.rawValue))
    }

    public var line: String {
        TracedMemoryFault.seconds(answeredNs ?? requestedNs) + " tid \(tid) guest-request KVM_HC_MAP_GPA_RANGE \(rangeText) to \(directionText): "
            + outcome.words + (answeredNs.map { " after \(ConversionTiming.micros($0 >= requestedNs ? $0 - requestedNs : 0))" } ?? "")
    }
}

extension TracedAttributes {
    /// The highest GFN (exclusive) any traced conversion reached (the initial shared run of a complete map aside).
    public var extent: UInt64 {
        var top: UInt64 = 0
        for r in runs where r.end < Self.gfnLimit { top = max(top, r.end) }
        if let last = runs.last, last.end == Self.gfnLimit, last.start > 0 { top = max(top, last.start) }
        return top
    }

    /// The map, with the guest's requests pending at the time (`GuestRequestTracker`).
    public func mapJSON(pending: [GuestRequestTracker.Request] = []) -> JSON {
        let v = view(start: 0, end: max(extent, 1))
        return .object([
            ("event", .string("attribute-map")), ("complete", .bool(complete)), ("applied", .u(applied)), ("refused", .u(refused)),
            ("forgotten", .u(forgotten)),
            ("overflowed", .bool(overflowed)), ("pages", .u(extent)),
            ("runs", .array(v.known.map { .object([("start-gfn", .u($0.start)), ("end-gfn", .u($0.end)), ("private", .bool($0.isPrivate))]) })),
            ("unknown", .array(v.unknown.map { .object([("start-gfn", .u($0.lowerBound)), ("end-gfn", .u($0.upperBound))]) })),
            ("pending-requests", .array(pending.map(\.json))),
        ])
    }

    public func mapLine(pending: [GuestRequestTracker.Request] = []) -> String {
        let v = view(start: 0, end: max(extent, 1))
        return "attribute map (\(complete ? "complete: traced from before the VM" : "pages not converted since the trace began are unknown")): "
            + "\(applied) conversions applied, \(refused) refused; private: "
            + v.known.filter(\.isPrivate).map { "gfn 0x\(String($0.start, radix: 16))-0x\(String($0.end, radix: 16))" }.joined(separator: ", ")
            + (pending.isEmpty ? "" : "; guest requests pending: " + pending.map { "\($0.rangeText) to \($0.directionText)" }.joined(separator: ", "))
    }
}

extension ConversionTiming: JSONObjectRecord {
    /// What the trace could not time, in words; nil when every step was.
    var missing: String? {
        if exitNs == nil { return "made by a thread with no exit to userspace before it (not a vCPU handling its own exit): only convert is timed" }
        if reenteredNs == nil { return "the thread's next KVM_RUN was not traced: re-entry not timed" }
        return nil
    }

    static let pairedFrom = JSON.array(["kvm_userspace_exit", "sys_enter_ioctl", "kvm_vm_set_mem_attributes", "sys_exit_ioctl", "sys_enter_ioctl"].map(JSON.string))

    public func forEachMember(_ m: (JSONName, JSON) -> Void) {
        let c = conversion
        m("event", .string("conversion-steps")); m("tid", .int(Int64(c.tid))); m(FaultRecord.Member.timeNs.jsonName, .u(reenteredNs ?? c.returnedNs))
        m("paired-from", Self.pairedFrom)
        m("start-gfn", c.startGFN.map { .u($0) } ?? .null); m("end-gfn", c.endGFN.map { .u($0) } ?? .null)
        m("to", c.toPrivate.map { .string($0 ? "private" : "shared") } ?? .null); m("result", .string(c.accepted ? "applied" : "refused"))
        m("exit", exitReason.map { .string($0.name) } ?? .null); m("exit-ns", exitNs.map { .u($0) } ?? .null)
        m("entered-ns", c.enteredNs.map { .u($0) } ?? .null); m("returned-ns", .u(c.returnedNs))
        m("re-entered-ns", reenteredNs.map { .u($0) } ?? .null)
        m("steps-ns", .object(ConversionStep.allCases.map { s in (s.rawValue, duration(s).map { .u($0) } ?? .null) }))
        m("missing", missing.map(JSON.string) ?? .null)
    }

    public var line: String {
        let c = conversion
        let steps = ConversionStep.allCases.map { s in "\(s.rawValue) " + (duration(s).map(Self.micros) ?? "-") }.joined(separator: ", ")
        return TracedMemoryFault.seconds(reenteredNs ?? c.returnedNs) + " tid \(c.tid) conversion-steps \(c.rangeText) to \(c.directionText)"
            + (exitReason.map { " after a \($0.name) exit" } ?? "") + ": \(steps)" + (totalNs.map { " (total \(Self.micros($0)))" } ?? "")
    }

    /// `ns` in microseconds, for lines and the inspector ("12.3 µs").
    public static func micros(_ ns: UInt64) -> String {
        ns < 10_000 ? "\(ns / 1000).\((ns % 1000) / 100) µs" : ns < 10_000_000 ? "\(ns / 1000) µs" : "\(ns / 1_000_000) ms"
    }
}
