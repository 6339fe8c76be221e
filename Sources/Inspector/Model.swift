import Algorithms
import ControlProtocol

/// Everything the views show.
public struct InspectorModel: Sendable {
    public var vm = VMInfo()
    /// The fault injections the source can make (a stock QEMU: NMI only); the menu offers these and no others.
    public var offeredInjections: [InjectionKind] = InjectionKind.allCases
    public var memslots: [MemslotRow] = []
    public var runs: [RunRow] = []
    /// Why the runs shown differ from the peer's (they came unsorted or overlapping), or nil.
    public var runsRepaired: String?
    /// vCPUs the peer listed past `maxVCPUs` (x86 KVM's KVM_MAX_VCPUS), left out of the views.
    public var vcpusLeftOut = 0
    public static let maxVCPUs = 4096
    public var vcpus: [VCPURow] = []
    /// The vCPUs as of the previous refresh (changed values are highlighted, exit rates computed).
    public var previousVCPUs: [VCPURow] = []
    public var vcpuRefreshIntervalNs: UInt64 = 0
    /// The newest fault records, oldest first, at most `faultCapacity`.
    public internal(set) var faults = FaultLog()
    /// Records a kernel tracepoint event saw too (`corroborate`).
    public internal(set) var faultsTraced: UInt64 = 0
    /// Records removed from the front of `faults` since the session began: a record's absolute position is
    /// `faultBase` + its index.
    var faultBase: UInt64 = 0
    /// The records a traced event may still corroborate, by what it must match.
    var untraced = CorroborationIndex()
    /// Whether `untraced` is kept: from the first `corroborate` on (a session with a trace beside its VMM). Other
    /// sessions never pay for it.
    var indexingUntraced = false
    public let faultCapacity: Int
    /// Records the server said it dropped for us, and events it dropped.
    public var faultsDropped: UInt64 = 0
    public var eventsDropped: UInt64 = 0
    /// What the last conversion done from this inspector did and what followed (the status area's story line).
    public var story: Story?
    /// The VMM's private/shared map and KVM's traced one disagree (`MapAgreement`): the status line's alarm.
    public var mapAlarm: String?
    /// Conversions a trace timed, step by step (`ConversionStep`): the faults pane's histogram.
    public var conversionLatency = LatencyHistogram()
    /// The steps of the conversion that resolved a memory fault, by the fault row's `seq`, for rows still kept.
    public internal(set) var conversionSteps: [UInt64: [ConversionStep: UInt64]] = [:]
    /// Records received in all.
    public var faultsReceived: UInt64 = 0
    /// Faults per second over the last 60 seconds (last element = the current second).
    public var faultRate: [Int] = Array(repeating: 0, count: 60)
    var faultRateSecond: UInt64 = 0
    /// Where and when (monotonic ns) the newest faults hit, for the map's fading marks.
    public var recentFaults = RecentFaults()
    /// GUEST_REPORT counts by kind, and the last value of each.
    public var guestReports: [Open<GuestReportKind>: (count: UInt64, last: UInt64)] = [:]
    public var connection = ConnectionState.disconnected("not connected")
    /// Events received in the last second (status bar).
    public var eventRate = 0
    var eventsThisSecond = 0
    var eventSecond: UInt64 = 0
    public var memslotGeneration: UInt64 = 0
    /// Set when an event says memslots or attributes changed; the controller re-queries and clears it.
    public var memslotsStale = true
    public var attributesStale = true
    /// Whether the peer is a stock QEMU (no vmscope commands): known once its version is.
    public var peerIsQEMU: Bool { vm.qemuVersion != nil }
    /// Views the peer has no source for, with the reason the pane shows instead of an empty one.
    public var unavailable: [Pane: String] = [:]
    /// Set when no source gives private/shared attributes but traced accesses carry GPAs (a stock QEMU or a
    /// trace-only view with KVM's tracepoints on): the map is a heat map of those accesses over the KVM-mapped
    /// ranges, and this says why it has no attributes.
    public var heatMapNote: String?
    /// Set when the map's attributes come from KVM's tracepoints (`kvm_vm_set_mem_attributes`, paired with each
    /// ioctl's result) rather than from the VMM: `runs` hold the pages the trace knows, and this the rest.
    public var tracedMap: TracedMapState?

    /// What a traced map knows of itself.
    public struct TracedMapState: Sendable, Equatable {
        /// Page ranges (GFNs) no traced conversion covered since before the VM existed: drawn as unknown.
        public var unknown: [Range<UInt64>]
        /// The highest GFN (exclusive) the map spans: conversions and faults seen.
        public var pages: UInt64
        public var applied: UInt64
        public var refused: UInt64
        /// The newest refusal, in words.
        public var lastRefusal: String?
        /// Whether the trace began before the VM (so no page is unknown).
        public var complete: Bool
        /// The guest's `KVM_HC_MAP_GPA_RANGE` requests its VMM has not answered yet (`GuestRequestTracker`): GFNs
        /// (nil: a page size the ABI does not define), direction (nil: unclear), and when (trace clock).
        public var pendingRequests: [PendingRequest] = []
        /// The guest's requests answered so far, by outcome (`GuestRequestTracker.Request.Outcome`'s words).
        public var answeredRequests: [AnsweredRequests] = []
        public struct AnsweredRequests: Sendable, Equatable {
            public var outcome: String
            public var count: UInt64
            public init(_ outcome: String, _ count: UInt64) { self.outcome = outcome; self.count = count }
        }
        public struct PendingRequest: Sendable, Equatable {
            public var gfns: Range<UInt64>?
            public var toPrivate: Bool?
            public var requestedNs: UInt64
            public init(gfns: Range<UInt64>?, toPrivate: Bool?, requestedNs: UInt64) {
                self.gfns = gfns; self.toPrivate = toPrivate; self.requestedNs = requestedNs
            }
        }
        /// The pending request covering `gfn`, if any.
        public func pendingRequest(at gfn: UInt64) -> PendingRequest? {
            pendingRequests.first { $0.gfns?.contains(gfn) == true }
        }
        public init(unknown: [Range<UInt64>], pages: UInt64, applied: UInt64, refused: UInt64, lastRefusal: String?, complete: Bool) {
            self.unknown = unknown; self.pages = pages; self.applied = applied; self.refused = refused
            self.lastRefusal = lastRefusal; self.complete = complete
        }
    }

    /// The pages the map spans: RAM; in a heat map also every memslot and every traced access (MMIO to a device
    /// page lies above RAM).
    public var mapPages: UInt64 {
        var pages = vm.ramSize / 4096
        if let t = tracedMap { pages = max(pages, t.pages) }
        if heatMapNote != nil {
            for m in memslots { pages = max(pages, m.memslot.gpa.saturatingAdd(m.memslot.size) / 4096) }
            if let g = recentFaults.highestGFN { pages = max(pages, g.saturatingAdd(1)) }
        }
        return max(1, pages)
    }
    /// VM-wide KVM statistics where the peer reports them (QEMU's `query-stats` target `vm`).
    public var vmStats: [(String, UInt64)] = []

    public init(faultCapacity: Int = 100_000) { self.faultCapacity = faultCapacity }

}

/// The newest `capacity` fault marks (GFN, monotonic ns), oldest overwritten first: O(1) per fault, so a burst
/// costs the map nothing it has to catch up on. A page that faulted again appears again (the map takes the
/// newest of a cell's marks).
public struct RecentFaults: Sendable, Sequence, ExpressibleByDictionaryLiteral {
    public let capacity: Int
    private var marks: [(gfn: UInt64, ns: UInt64)] = []
    private var next = 0

    public init(capacity: Int = 4096) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    public init(dictionaryLiteral elements: (UInt64, UInt64)...) {
        self.init()
        for (g, t) in elements { append(gfn: g, at: t) }
    }

    public mutating func append(gfn: UInt64, at ns: UInt64) {
        if marks.count < capacity { marks.append((gfn, ns)) } else { marks[next] = (gfn, ns) }
        next = (next + 1) % capacity
        highestGFN = Swift.max(highestGFN ?? 0, gfn)
    }

    /// The newest mark in cell `cell` of `pagesPerCell` pages.
    public func lastMark(inCell cell: UInt64, pagesPerCell: UInt64) -> UInt64? {
        marks.lazy.filter { $0.gfn / pagesPerCell == cell }.map(\.ns).max()
    }

    /// The highest page ever marked (the heat map's extent only grows, so the view does not jump as marks fade).
    public private(set) var highestGFN: UInt64?

    public var count: Int { marks.count }
    public var isEmpty: Bool { marks.isEmpty }

    /// When `gfn` last faulted, among the marks kept.
    public subscript(gfn: UInt64) -> UInt64? {
        marks.lazy.filter { $0.gfn == gfn }.map(\.ns).max()
    }

    public func makeIterator() -> some IteratorProtocol<(gfn: UInt64, ns: UInt64)> { marks.makeIterator() }
}

extension UInt64 {
    /// `self + other`, or `UInt64.max` where that would wrap.
    public func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (v, overflow) = addingReportingOverflow(other)
        return overflow ? .max : v
    }

    /// `self - other`, or 0 where that would go below it.
    public func saturatingSubtract(_ other: UInt64) -> UInt64 { self > other ? self - other : 0 }

    /// `value` rounded toward zero, 0 for a negative or NaN one, `UInt64.max` for one past it (the conversion
    /// `UInt64(_:)` traps on).
    public init(saturating value: Double) {
        if !(value > 0) { self = 0 } else if value >= 18_446_744_073_709_551_616.0 { self = .max } else { self = UInt64(value) }
    }
}

/// An exit a kernel tracepoint reported, to match against the VMM's own fault records.
/// Positions of the records not yet corroborated, under (vCPU, exit, page) and under (vCPU, exit) for events that
/// name no page; each list in arrival order. Entries of records since traced or trimmed are skipped when met and
/// dropped when the index is rebuilt.
struct CorroborationIndex: Sendable {
    struct Key: Hashable, Sendable {
        var vcpu: Int?
        var exit: String
        var page: UInt64?
    }
    /// Candidates looked at for one event before it is left unmatched.
    static let probes = 64
    /// A record's absolute position and time (kept here: the search reads no record).
    struct Entry: Sendable {
        var position: UInt64
        var timeNs: UInt64
    }
    var lists: [Key: [Entry]] = [:]
    var entries = 0
    /// Times the model rebuilt it from the kept records (tests bound it).
    var rebuilds = 0
}

public struct TracedExit: Sendable, Equatable {
    public var timeNs: UInt64
    public var vcpu: Int?
    /// The GPA, where the event has one (`kvm_mmio`; `kvm_userspace_exit` has none).
    public var gpa: UInt64?
    public var exit: FaultExit
    public init(timeNs: UInt64, vcpu: Int?, gpa: UInt64?, exit: FaultExit) {
        self.timeNs = timeNs; self.vcpu = vcpu; self.gpa = gpa; self.exit = exit
    }
}
