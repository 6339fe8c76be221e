import KVM

/// A VM's private/shared map as KVM's tracepoints show it, kept from outside the VMM: each traced
/// `KVM_SET_MEMORY_ATTRIBUTES` (`kvm_vm_set_mem_attributes`) is applied only once the same thread's ioctl has
/// returned 0 (`sys_exit_ioctl`): the tracepoint fires before KVM takes the slots lock, and the request can still
/// fail there. A request the kernel refused never changes the map; it is kept as a refused conversion, with its
/// range when the tracepoint saw it (refusals of the ioctl's argument checks come before the tracepoint, so only
/// the errno is known of them).
///
/// What it cannot know is said, not guessed: pages nobody converted since the trace began are `unknown` unless
/// the trace began before the VM existed (`complete`), when every page starts shared, as KVM creates them.
///
/// Conversions are applied in the order of their returns. An event can reach the reader after newer ones (a CPU
/// whose event was stamped, then held up before it was committed: in a nested VM the L1 vCPU writing it may be
/// descheduled by its host for milliseconds), so a conversion that returns late is applied only to the pages no
/// conversion that returned after it wrote; where one that did may already be forgotten (older than `lateWindowNs`,
/// or past `recentLimit`), those pages become unknown.
public struct TracedAttributes: Sendable, Equatable {
    /// A run of GFNs [start, end) with one known state.
    public struct Run: Sendable, Equatable, CustomStringConvertible {
        public var start: UInt64
        public var end: UInt64
        public var isPrivate: Bool
        public init(start: UInt64, end: UInt64, isPrivate: Bool) { self.start = start; self.end = end; self.isPrivate = isPrivate }
        public var description: String { "gfn [0x\(String(start, radix: 16)), 0x\(String(end, radix: 16))) \(isPrivate ? "private" : "shared")" }
    }

    /// One conversion request as the trace saw it, from the ioctl's entry (when traced) to its return.
    public struct Conversion: Sendable, Equatable {
        public var tid: Int32
        /// `sys_enter_ioctl`, `kvm_vm_set_mem_attributes` and `sys_exit_ioctl` times (trace clock, ns); the first two
        /// are nil when the trace began after them, or (the second) when an argument check refused the request.
        public var enteredNs: UInt64?
        public var tracedNs: UInt64?
        public var returnedNs: UInt64
        /// GFNs and direction, when the tracepoint fired.
        public var startGFN: UInt64?
        public var endGFN: UInt64?
        public var toPrivate: Bool?
        /// nil: the kernel accepted it; else its errno.
        public var errno: Int32?
        /// Pages whose state it changed, where every page of the range was known before; nil where some were not.
        public var changedPages: UInt64?

        public var accepted: Bool { errno == nil }
    }

    /// Known runs, sorted and not overlapping; pages outside all of them are unknown.
    public private(set) var runs: [Run]
    /// Whether the trace saw the VM from its creation: then no page is unknown (until events are lost: `forget`).
    public private(set) var complete: Bool
    /// Times the map forgot everything because the kernel dropped events (`forget`).
    public private(set) var forgotten: UInt64 = 0
    /// Conversions applied, and refused.
    public private(set) var applied: UInt64 = 0
    public private(set) var refused: UInt64 = 0
    /// Accepted conversions that reached the map after one that returned later (see the type's note).
    public private(set) var late: UInt64 = 0
    /// Set once the map would need more than `maxRuns` runs: it stops changing and says so (memory stays bounded
    /// whatever a VMM or a raw file does).
    public private(set) var overflowed = false
    public static let maxRuns = 1 << 20
    /// GFNs are below 2^52 (x86's widest physical address).
    public static let gfnLimit: UInt64 = 1 << 52

    private struct Pending: Sendable, Equatable {
        var enteredNs: UInt64?
        var tracedNs: UInt64?
        var range: (start: UInt64, end: UInt64, toPrivate: Bool)?
        static func == (a: Pending, b: Pending) -> Bool {
            a.enteredNs == b.enteredNs && a.tracedNs == b.tracedNs && a.range?.start == b.range?.start
                && a.range?.end == b.range?.end && a.range?.toPrivate == b.range?.toPrivate
        }
    }
    /// Accepted conversions that returned within `lateWindowNs` of the newest (at most `recentLimit`), in return
    /// order: what a late one must not overwrite. Every accepted conversion that returned after `horizonNs` is here.
    private struct Applied: Sendable, Equatable { var start: UInt64, end: UInt64, returnedNs: UInt64 }
    private var recent: [Applied] = []
    private var recentHead = 0
    private var horizonNs: UInt64 = 0
    static let lateWindowNs: UInt64 = 2_000_000_000
    static let recentLimit = 4096

    /// Requests in flight, by thread (a thread has at most one ioctl in flight); bounded for hostile input.
    private var pending: [Int32: Pending] = [:]
    static let pendingLimit = 4096
    var pendingCount: Int { pending.count }

    public init(complete: Bool) {
        self.complete = complete
        runs = complete ? [Run(start: 0, end: Self.gfnLimit, isPrivate: false)] : []
    }

    /// The state of one page: true private, false shared, nil unknown.
    public func isPrivate(gfn: UInt64) -> Bool? {
        let i = index(after: gfn)
        guard i < runs.count, runs[i].start <= gfn else { return nil }
        return runs[i].isPrivate
    }

    /// The first run that ends after `gfn`.
    private func index(after gfn: UInt64) -> Int {
        var lo = 0, hi = runs.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if runs[mid].end <= gfn { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The known runs clipped to [start, end), and the unknown ranges between them.
    public func view(start: UInt64, end: UInt64) -> (known: [Run], unknown: [Range<UInt64>]) {
        guard start < end else { return ([], []) }
        var known: [Run] = [], unknown: [Range<UInt64>] = []
        var at = start
        var i = index(after: start)
        while i < runs.count && runs[i].start < end {
            let r = runs[i]
            let lo = max(r.start, start), hi = min(r.end, end)
            if lo > at { unknown.append(at..<lo) }
            known.append(Run(start: lo, end: hi, isPrivate: r.isPrivate))
            at = hi
            i += 1
        }
        if at < end { unknown.append(at..<end) }
        return (known, unknown)
    }

    /// The kernel dropped events (its buffer was full): any of them may have been a conversion, so no page is known
    /// any more, and requests in flight are let go. Pages become known again as conversions are seen.
    public mutating func forget() {
        runs = []
        complete = false
        pending.removeAll()
        if let newest = recent.last?.returnedNs { horizonNs = max(horizonNs, newest) }
        recent = []
        recentHead = 0
        forgotten &+= 1
    }

    /// Takes one event; returns the conversion it completed (accepted or refused), if any.
    public mutating func apply(_ e: TraceEvent) -> Conversion? {
        switch e.kind {
        case .ioctlEnter(_, let cmd):
            guard cmd == UInt64(KVMIoctl.setMemoryAttributes.value) else { return nil }
            remember(e.tid, Pending(enteredNs: e.timeNs))
        case .setMemoryAttributes(let start, let end, let attributes):
            var p = pending[e.tid] ?? Pending()
            p.tracedNs = e.timeNs
            p.range = (start, end, attributes & MemoryAttributes.private.rawValue != 0)
            remember(e.tid, p)
        case .ioctlExit(let ret):
            guard let p = pending.removeValue(forKey: e.tid) else { return nil }
            var c = Conversion(tid: e.tid, enteredNs: p.enteredNs, tracedNs: p.tracedNs, returnedNs: e.timeNs,
                               startGFN: p.range?.start, endGFN: p.range?.end, toPrivate: p.range?.toPrivate)
            if ret != 0 {
                c.errno = ret < 0 && ret >= -4095 ? Int32(-ret) : 0
                refused &+= 1
                return c
            }
            if let r = p.range {
                c.changedPages = applyInOrder(start: r.start, end: min(r.end, Self.gfnLimit), isPrivate: r.toPrivate, returnedNs: e.timeNs)
            }
            applied &+= 1
            return c
        default:
            return nil
        }
        return nil
    }

    private mutating func remember(_ tid: Int32, _ p: Pending) {
        if pending.count >= Self.pendingLimit && pending[tid] == nil { pending.removeAll() }
        pending[tid] = p
    }

    /// An accepted conversion of [start, end) that returned at `returnedNs`: set where no conversion that returned
    /// later wrote (all of it, unless it is late), and remembered for those that come later still.
    private mutating func applyInOrder(start: UInt64, end: UInt64, isPrivate: Bool, returnedNs: UInt64) -> UInt64? {
        let newest = recent.last?.returnedNs ?? horizonNs
        guard returnedNs < newest else {
            remember(Applied(start: start, end: end, returnedNs: returnedNs), at: recent.count)
            return set(start: start, end: end, isPrivate: isPrivate)
        }
        late &+= 1
        // Where conversions that returned after it wrote, theirs stands; the rest is its own, unless one of those
        // may have been forgotten, when it is unknown.
        let firstLater = recent[recentHead...].firstIndex { $0.returnedNs > returnedNs } ?? recent.count
        let later = recent[firstLater...].map { $0.start..<$0.end }.filter { $0.overlaps(start..<end) }
            .sorted { $0.lowerBound < $1.lowerBound }
        let known = returnedNs >= horizonNs
        var at = start, changed: UInt64? = 0
        func piece(_ lo: UInt64, _ hi: UInt64) {
            guard lo < hi else { return }
            let n = set(start: lo, end: hi, isPrivate: known ? isPrivate : nil)
            changed = changed.flatMap { c in n.map { c + $0 } }
        }
        for r in later {
            piece(at, min(r.lowerBound, end))
            at = max(at, r.upperBound)
            if at >= end { break }
        }
        piece(at, end)
        remember(Applied(start: start, end: end, returnedNs: returnedNs), at: firstLater)
        return known ? changed : nil
    }

    /// Keeps `a` at index `i` of the recent conversions; lets go of those past the window or the limit.
    private mutating func remember(_ a: Applied, at i: Int) {
        guard a.start < a.end else { return }
        recent.insert(a, at: max(i, recentHead))
        let newest = recent.last?.returnedNs ?? 0
        while recentHead < recent.count,
              recent.count - recentHead > Self.recentLimit || recent[recentHead].returnedNs &+ Self.lateWindowNs < newest {
            horizonNs = max(horizonNs, recent[recentHead].returnedNs)
            recentHead += 1
        }
        if recentHead > 1024 && recentHead * 2 > recent.count {
            recent.removeFirst(recentHead)
            recentHead = 0
        }
    }

    /// Sets [start, end) (clipped below `gfnLimit`) to `isPrivate`, or to unknown where it is nil; returns the pages
    /// whose known state changed, nil where some were unknown before (or are now).
    @discardableResult
    mutating func set(start: UInt64, end rawEnd: UInt64, isPrivate: Bool?) -> UInt64? {
        let end = min(rawEnd, Self.gfnLimit)
        guard start < end, !overflowed else { return overflowed ? nil : 0 }
        // What was there: changed pages, and whether all were known.
        var changed: UInt64 = 0, known: UInt64 = 0
        let first = index(after: start)
        var last = first
        while last < runs.count && runs[last].start < end {
            let lo = max(runs[last].start, start), hi = min(runs[last].end, end)
            known += hi - lo
            if runs[last].isPrivate != isPrivate { changed += hi - lo }
            last += 1
        }
        var replacement: [Run] = []
        if first < last, runs[first].start < start { replacement.append(Run(start: runs[first].start, end: start, isPrivate: runs[first].isPrivate)) }
        if let isPrivate { replacement.append(Run(start: start, end: end, isPrivate: isPrivate)) }
        if first < last, runs[last - 1].end > end { replacement.append(Run(start: end, end: runs[last - 1].end, isPrivate: runs[last - 1].isPrivate)) }
        // Merge with equal neighbours on either side.
        var lo = first, hi = last
        if lo > 0, let head = replacement.first, runs[lo - 1].end == head.start, runs[lo - 1].isPrivate == head.isPrivate {
            replacement[0].start = runs[lo - 1].start
            lo -= 1
        }
        if hi < runs.count, let tail = replacement.last, runs[hi].start == tail.end, runs[hi].isPrivate == tail.isPrivate {
            replacement[replacement.count - 1].end = runs[hi].end
            hi += 1
        }
        // Adjacent pieces inside the replacement with the same state (a split run's remainder next to the new run).
        var merged: [Run] = []
        for r in replacement {
            if let l = merged.last, l.end == r.start, l.isPrivate == r.isPrivate { merged[merged.count - 1].end = r.end } else { merged.append(r) }
        }
        if runs.count - (hi - lo) + merged.count > Self.maxRuns {
            overflowed = true
            return nil
        }
        runs.replaceSubrange(lo..<hi, with: merged)
        return known == end - start && isPrivate != nil ? changed : nil
    }
}
