import Schema

/// What vmscope pairs from a process's events, in the order the kernel gave them: conversions (a traced
/// `KVM_SET_MEMORY_ATTRIBUTES` with its ioctl's result) and the private/shared map they make, each conversion's steps
/// (the exit before it, the `KVM_RUN` after it), the guest's `KVM_HC_MAP_GPA_RANGE` requests and memory faults.
/// `vmscope trace --paired-only` prints it, live or from a raw file (`--load-raw`), and the benchmarks count it:
/// one pairing, whatever feeds it.
public struct TracePairing: Sendable {
    /// The traced map; nil where the kernel does not trace conversions with their result.
    public private(set) var attributes: TracedAttributes?
    public private(set) var requests: GuestRequestTracker
    /// Whether `attributes` is there (asked per event: comparing the optional map with nil copied it).
    public let tracesConversions: Bool
    /// Whether the kernel pairs memory faults (`KernelPairing.memoryFaults`): its paired faults come instead of page faults.
    public let faultsPairedInKernel: Bool
    private var faults = MemoryFaultPairing()
    private var latency = ConversionLatencyPairing()

    /// One record paired from the events.
    public enum Paired: Sendable, JSONObjectRecord {
        case conversion(TracedAttributes.Conversion)
        case steps(ConversionTiming)
        case request(GuestRequestTracker.Request)
        case fault(TracedMemoryFault)

        /// The record's members (`JSONObjectRecord`: `json`, and `writeJSON` for `vmscope trace --paired-only --json`).
        public func forEachMember(_ m: (JSONName, JSON) -> Void) {
            switch self {
            case .conversion(let c): c.forEachMember(m)
            case .steps(let t): t.forEachMember(m)
            case .request(let r): r.forEachMember(m)
            case .fault(let f): f.forEachMember(m)
            }
        }

        public var line: String {
            switch self {
            case .conversion(let c): c.line
            case .steps(let t): t.line
            case .request(let r): r.line
            case .fault(let f): f.line
            }
        }
    }

    /// `tracesConversions`: the events carry `kvm_vm_set_mem_attributes` and the ioctl events (`EventLayouts`);
    /// `complete`: the trace saw the process before it had a VM (every page starts shared).
    public init(tracesConversions: Bool, complete: Bool, faultsPairedInKernel: Bool = false) {
        attributes = tracesConversions ? TracedAttributes(complete: complete) : nil
        self.tracesConversions = tracesConversions
        self.faultsPairedInKernel = faultsPairedInKernel
        requests = GuestRequestTracker(conversionsTraced: tracesConversions)
    }

    /// Whether `layouts` let conversions be paired with their results.
    public static func tracesConversions(_ layouts: EventLayouts) -> Bool {
        layouts.events["kvm_vm_set_mem_attributes"] != nil
            && (layouts.events["sys_exit_ioctl"] != nil || layouts.events[EventLayouts.kernelPairedIoctlResult] != nil)
    }

    /// Whether `layouts` carry the kernel's paired memory faults (a session that had the kernel pair them, or its
    /// recording).
    public static func faultsPairedInKernel(_ layouts: EventLayouts) -> Bool {
        layouts.events[EventLayouts.kernelPairedFault] != nil
    }

    /// Takes one event; appends what it completed to `out`.
    public mutating func apply(_ e: TraceEvent, into out: inout [Paired]) {
        // A page fault is only ever the memory-fault pairing's (the map, the conversions' steps and the guest's
        // requests pass it by): most of what a paired tracer reads, so it goes there straight.
        if case .pageFault = e.kind {
            _ = faults.apply(e, attributes: nil)
            return
        }
        if faultsPairedInKernel {
            if case .kernelPairedFault = e.kind {
                pairInKernelMode(e, into: &out)
                return
            }
            // A MEMORY_FAULT exit whose thread went on with no paired fault: the kernel had no page fault for it.
            if faults.awaitsKernelFault, !e.isMemoryFaultExit, let f = faults.flush(tid: e.tid) { out.append(.fault(f)) }
        }
        let c = attributes?.apply(e)
        if let c { out.append(.conversion(c)) }
        if tracesConversions {
            for t in latency.apply(e, completed: c) { out.append(.steps(t)) }
        }
        for r in requests.apply(e, completed: c) { out.append(.request(r)) }
        // The rest of the memory-fault pairing: a MEMORY_FAULT exit (it passes every other event by). The map goes
        // along only with it: handing it over copies it (it is this pairing's, as `faults` is), which for every event
        // was a third of the pairing's instructions.
        if e.isMemoryFaultExit {
            if faultsPairedInKernel { return pairInKernelMode(e, into: &out) }
            let map = attributes
            if let f = faults.apply(e, attributes: map) { out.append(.fault(f)) }
        }
    }

    private mutating func pairInKernelMode(_ e: TraceEvent, into out: inout [Paired]) {
        var done: [TracedMemoryFault] = []
        let map = attributes
        faults.applyKernelPaired(e, attributes: map, into: &done)
        for f in done { out.append(.fault(f)) }
    }

    /// The trace ended: MEMORY_FAULT exits still waiting for the kernel's paired fault are given out without a GPA.
    public mutating func drain() -> [Paired] { faults.drain().map(Paired.fault) }

    /// Takes a batch of events, in order; appends what they completed to `out`. The loop is here, in a module built
    /// optimised in every build: in `vmscope trace`'s own module a debug build (the README's `swift run`, the lab's
    /// tests) walked the batch through unspecialised generic code, some 400 instructions an event (callgrind), a fifth
    /// of what the paired tracer spent.
    public mutating func apply(_ batch: [TraceEvent], into out: inout [Paired]) {
        for e in batch { apply(e, into: &out) }
    }

    /// The kernel dropped events: any of them may have been a conversion, so the map forgets what it knew (its next
    /// attribute-map says complete false, and how many times it forgot), and the requests pending end unanswered.
    public mutating func forget() -> [Paired] {
        attributes?.forget()
        return drain() + requests.forget().map(Paired.request)
    }

    /// The guest's requests still pending, oldest first.
    public var pendingRequests: [GuestRequestTracker.Request] { requests.pendingRequests }

    /// The map as one record (nil without one), with the requests pending.
    public func mapJSON() -> JSON? { attributes?.mapJSON(pending: pendingRequests) }
    public func mapLine() -> String? { attributes?.mapLine(pending: pendingRequests) }
}
