import KVM

/// The guest's own conversion requests, from outside the VMM: a `KVM_HC_MAP_GPA_RANGE` hypercall (`kvm_hypercall`)
/// is pending from the moment the guest made it until its vCPU thread goes back into the guest (its next
/// `KVM_RUN`), and what the thread did in between says what became of it:
/// - `converted`: the VMM made at least one conversion the kernel accepted (the conversions are in the traced map;
///   a VMM may convert another view of the range, as vmscope's kernel engine does at its shared alias);
/// - `refused`: every conversion it asked for was refused;
/// - `notConverted`: KVM forwarded it (`KVM_EXIT_HYPERCALL`) and the VMM answered without converting;
/// - `answeredByKVM`: the thread left the guest for another reason, or made its next request, with no HYPERCALL exit
///   between, so KVM answered the hypercall itself (the VMM had not enabled `KVM_CAP_EXIT_HYPERCALL`, or the
///   arguments were invalid);
/// - `unanswered`: events were lost while it was pending (or more than `threadLimit` threads had one pending);
/// - `forwarded`: KVM forwarded it, and this kernel does not trace conversions with their results (before 6.17),
///   so what the VMM did is not known.
/// Nothing is inferred from addresses: the VMM's answer is on the requesting thread, as KVM requires (the exit is
/// the vCPU's). At most `threadLimit` requests are pending; beyond that the oldest are let go as `unanswered`.
public struct GuestRequestTracker: Sendable {
    public struct Request: Sendable, Equatable {
        public enum Outcome: String, Sendable, CaseIterable {
            case pending, converted, refused, notConverted = "not-converted", answeredByKVM = "answered-by-kvm", unanswered, forwarded
        }
        public var tid: Int32
        public var requestedNs: UInt64
        public var range: Hypercall.MapGPARange
        /// Whether KVM forwarded it to the VMM (`kvm_userspace_exit` reason HYPERCALL on the thread).
        public var forwarded = false
        public var conversions = 0
        public var refusals = 0
        /// The thread's next `KVM_RUN` (or, for `answeredByKVM`, its next exit).
        public var answeredNs: UInt64?
        public var outcome = Outcome.pending

        /// GFNs [start, end) the guest asked about (clipped at x86's 52 address bits); nil with an unknown page size.
        public var gfns: Range<UInt64>? {
            guard let p = range.pageSize else { return nil }
            let limit = TracedAttributes.gfnLimit
            let start = min(range.gpa >> 12, limit)
            let (n, o1) = range.pages.multipliedReportingOverflow(by: p >> 12)
            let (end, o2) = start.addingReportingOverflow(n)
            return start..<(o1 || o2 ? limit : min(end, limit))
        }
    }

    public private(set) var pending: [Int32: Request] = [:]
    /// Requests ended, by outcome.
    public private(set) var ended: [Request.Outcome: UInt64] = [:]
    static let threadLimit = 4096

    /// Whether conversions and `KVM_RUN` entries are traced (`kvm_vm_set_mem_attributes` with the ioctl events).
    public let conversionsTraced: Bool

    public init(conversionsTraced: Bool) { self.conversionsTraced = conversionsTraced }

    public var pendingRequests: [Request] { pending.values.sorted { $0.requestedNs < $1.requestedNs } }

    /// Takes one event, with the conversion `TracedAttributes.apply` completed on it, if any; returns the requests it
    /// ended.
    public mutating func apply(_ e: TraceEvent, completed: TracedAttributes.Conversion?) -> [Request] {
        var out: [Request] = []
        switch e.kind {
        case .hypercall(let h):
            guard let m = h.mapGPARange else { break }
            // The thread's previous request was answered, or the guest could not have made another: by the VMM if KVM
            // forwarded it (its re-entry not traced: a kernel without the ioctl events), else by KVM itself.
            if let old = pending.removeValue(forKey: e.tid) { out.append(end(old, old.forwarded ? outcome(old) : .answeredByKVM, at: nil)) }
            if pending.count >= Self.threadLimit, let oldest = pending.values.min(by: { $0.requestedNs < $1.requestedNs }) {
                pending[oldest.tid] = nil
                out.append(end(oldest, .unanswered, at: nil))
            }
            pending[e.tid] = Request(tid: e.tid, requestedNs: e.timeNs, range: m)
        case .userspaceExit(let reason, _):
            guard var r = pending[e.tid], e.timeNs >= r.requestedNs else { break }
            if reason == .hypercall && !r.forwarded {
                r.forwarded = true
                pending[e.tid] = r
            } else if !r.forwarded || !conversionsTraced {
                pending[e.tid] = nil
                out.append(end(r, r.forwarded ? .forwarded : .answeredByKVM, at: e.timeNs))
            } else {
                // Forwarded and out again with no KVM_RUN traced between: the answer is what the thread did.
                pending[e.tid] = nil
                out.append(end(r, outcome(r), at: nil))
            }
        case .ioctlEnter(_, let cmd) where cmd == UInt64(KVMIoctl.run.value):
            guard let r = pending[e.tid], r.forwarded, e.timeNs >= r.requestedNs else { break }
            pending[e.tid] = nil
            out.append(end(r, outcome(r), at: e.timeNs))
        default:
            break
        }
        if let c = completed, var r = pending[c.tid], r.forwarded, c.returnedNs >= r.requestedNs {
            if c.accepted { r.conversions += 1 } else { r.refusals += 1 }
            pending[c.tid] = r
        }
        return out
    }

    /// The kernel dropped events: a request's answer may be among them.
    public mutating func forget() -> [Request] {
        let out = pendingRequests.map { end($0, .unanswered, at: nil) }
        pending.removeAll()
        return out
    }

    private func outcome(_ r: Request) -> Request.Outcome {
        !conversionsTraced ? .forwarded : r.conversions > 0 ? .converted : r.refusals > 0 ? .refused : .notConverted
    }

    private mutating func end(_ r: Request, _ outcome: Request.Outcome, at ns: UInt64?) -> Request {
        var r = r
        r.outcome = outcome
        r.answeredNs = ns
        ended[outcome, default: 0] &+= 1
        return r
    }
}
