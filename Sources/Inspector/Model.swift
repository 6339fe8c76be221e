import Algorithms
import DequeModule
import ControlProtocol

/// What the inspector knows about the VM, built from query replies and events (vmscope's VMM or QEMU).
/// Plain data: the controller feeds it, the renderer reads it.
public struct VMInfo: Sendable, Equatable {
    public var name = "?"
    public var pid: Int?
    public var engine = "?"
    public var sharedAliasBit: Int?
    public var ramSize: UInt64 = 0
    public var vcpus = 0
    public var mutationsAllowed = false
    public var faultInjectionAllowed = false
    public var policy = "?"
    /// A stock QEMU's own facts: its version ("QEMU 7.2.22"), run state (`query-status`) and accelerator.
    public var qemuVersion: String?
    public var runState: String?
    public var accelerator: String?
    /// A stock QEMU's machine type (`pc-q35-7.2`, with its alias when it has one: `pc-q35-7.2 (q35)`) and target
    /// architecture (`query-target`).
    public var machine: String?
    public var arch: String?
    /// How often a stock QEMU's registers and counters are read (QEMUSource's spacing: one second, or longer
    /// where that would cost QEMU more than its budget).
    public var pollIntervalNs: UInt64?
    /// A libvirt domain's state and reason as libvirt keeps them ("paused, user"), and its XML's facts (vCPU
    /// pinning, memory backing, launch security, devices).
    public var libvirtState: String?
    public var libvirtFacts: String?

    public init() {}

    /// A vmscope VMM's `query-vm` (engine and policy as it names them; `?` where it said nothing).
    public init(_ d: VMDescription) {
        name = d.name ?? "?"
        pid = d.pid
        engine = d.attributeEngine?.rawValue ?? "?"
        sharedAliasBit = d.sharedAlias
        ramSize = d.ramSize
        vcpus = d.vcpus
        mutationsAllowed = d.mutationsAllowed
        faultInjectionAllowed = d.faultInjectionAllowed
        policy = d.faultPolicy?.rawValue ?? "?"
    }
}

/// A memslot as the views show it: the protocol's `Memslot`, with what the inspector adds (page counts, and a
/// stock QEMU's region, offset and device).
@dynamicMemberLookup
public struct MemslotRow: Sendable, Equatable {
    public var memslot: Memslot
    /// Private and shared 4 KiB pages of the RAM this slot maps (from the attribute runs).
    public var privatePages: UInt64 = 0
    public var sharedPages: UInt64 = 0
    /// Whether `slot` is KVM's slot number; false for QEMU ranges, where QMP does not say it (`slot` is then
    /// the row's ordinal and is not shown).
    public var slotKnown = true
    /// QEMU's memory region name and the range's offset into it (`info mtree -f`'s `@OFFSET`).
    public var regionName: String?
    public var regionOffset: UInt64?
    /// The memory device this range belongs to, as QEMU's `query-memory-devices` names it: `dimm dimm1`,
    /// with `hotplugged` when it was plugged after start.
    public var device: String?

    public subscript<T>(dynamicMember path: WritableKeyPath<Memslot, T>) -> T {
        get { memslot[keyPath: path] }
        set { memslot[keyPath: path] = newValue }
    }

    public init(_ memslot: Memslot) { self.memslot = memslot }

    public init?(_ j: JSON) {
        guard let m = Memslot(json: j) else { return nil }
        self.init(m)
    }

    /// A KVM-mapped range QEMU printed in `info mtree -f`: slot number unknown, QEMU's region type as backing.
    public init(qemu r: QEMUText.FlatRange, ordinal: Int, guestMemfd: Bool) {
        self.init(slot: ordinal, gpa: r.start, size: r.size, view: .known(.plain),
                  backing: .unknown(guestMemfd && r.type == "ram" ? "ram+guest_memfd" : r.type))
        slotKnown = false
        regionName = r.name
        regionOffset = r.offset
    }

    public init(slot: Int, gpa: UInt64, size: UInt64, view: Open<MemslotView>, backing: Open<MemslotBacking>, flagNames: [String] = []) {
        self.init(Memslot(slot: slot, gpa: gpa, size: size, flagNames: flagNames, view: view, backing: backing))
    }

    /// Where the RAM this slot maps starts: its GPA, without the alias bit for a slot of the shared alias.
    func ramStart(aliasMask: UInt64) -> UInt64 {
        aliasMask != 0 && memslot.view == .shared ? memslot.gpa & ~aliasMask : memslot.gpa
    }
}

/// A run of RAM pages with one attribute, in bytes.
public typealias RunRow = AttributeRun

public struct VCPURow: Sendable, Equatable {
    public var index: Int
    public var threadID: Int
    public var state: Open<VCPURunState>
    public var lastExit: String
    public var exitCounts: [(String, UInt64)]
    public var registers: [(String, UInt64)]
    public var segments: [(String, UInt64)]   // selector per segment register
    public var controlRegisters: [(String, UInt64)]
    public var stats: [(String, UInt64)]
    public var guest: [(String, UInt64)]
    /// KVM's own count of all exits where the source has one (QEMU's `exits` statistic); else the sum of
    /// `exitCounts`.
    public var exitTotal: UInt64?
    /// Why the vCPU is in state `error` (the exit and its data), where the peer says.
    public var error: String?

    public var totalExits: UInt64 { exitTotal ?? exitCounts.reduce(0) { $0.saturatingAdd($1.1) } }

    /// A vmscope VMM's vCPU.
    public init(_ v: VCPUStatus) {
        index = v.index
        threadID = v.threadID
        state = v.state
        lastExit = v.lastExit
        exitCounts = v.exitCounts
        registers = v.registers ?? []
        segments = v.specialRegisters?.segments.map { ($0.0.rawValue, $0.1.selector) } ?? []
        controlRegisters = v.specialRegisters?.control.map { ($0.0.rawValue, $0.1) } ?? []
        stats = v.stats
        guest = v.guest
        error = v.error
    }

    public init?(_ j: JSON) {
        guard let v = VCPUStatus(json: j) else { return nil }
        self.init(v)
    }

    /// Whether the state is one the views warn about.
    public var isInTrouble: Bool {
        switch state {
        case .error, .shutdown, .faultStopped: true
        default: false
        }
    }

    public init(index: Int, threadID: Int = 0, state: Open<VCPURunState>, lastExit: String, exitCounts: [(String, UInt64)] = [],
                registers: [(String, UInt64)] = [], segments: [(String, UInt64)] = [], controlRegisters: [(String, UInt64)] = [],
                stats: [(String, UInt64)] = [], guest: [(String, UInt64)] = []) {
        self.index = index
        self.threadID = threadID
        self.state = state
        self.lastExit = lastExit
        self.exitCounts = exitCounts
        self.registers = registers
        self.segments = segments
        self.controlRegisters = controlRegisters
        self.stats = stats
        self.guest = guest
    }

    public static func == (a: VCPURow, b: VCPURow) -> Bool {
        a.index == b.index && a.state == b.state && a.lastExit == b.lastExit && a.error == b.error
            && a.exitCounts.map(\.0) == b.exitCounts.map(\.0) && a.exitCounts.map(\.1) == b.exitCounts.map(\.1)
            && a.registers.map(\.1) == b.registers.map(\.1) && a.stats.map(\.1) == b.stats.map(\.1)
    }
}

/// The connection as the status bar shows it.
public enum ConnectionState: Sendable, Equatable {
    case connected(String)
    case disconnected(String)
}

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
    public private(set) var faults = Deque<FaultRecord>()
    /// Records a kernel tracepoint event saw too (`corroborate`).
    public private(set) var faultsTraced: UInt64 = 0
    /// Records removed from the front of `faults` since the session began: a record's absolute position is
    /// `faultBase` + its index.
    private var faultBase: UInt64 = 0
    /// The records a traced event may still corroborate, by what it must match.
    private var untraced = CorroborationIndex()
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
    public private(set) var conversionSteps: [UInt64: [ConversionStep: UInt64]] = [:]
    /// Records received in all.
    public var faultsReceived: UInt64 = 0
    /// Faults per second over the last 60 seconds (last element = the current second).
    public var faultRate: [Int] = Array(repeating: 0, count: 60)
    private var faultRateSecond: UInt64 = 0
    /// Where and when (monotonic ns) the newest faults hit, for the map's fading marks.
    public var recentFaults = RecentFaults()
    /// GUEST_REPORT counts by kind, and the last value of each.
    public var guestReports: [String: (count: UInt64, last: UInt64)] = [:]
    public var connection = ConnectionState.disconnected("not connected")
    /// Events received in the last second (status bar).
    public var eventRate = 0
    private var eventsThisSecond = 0
    private var eventSecond: UInt64 = 0
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

    // MARK: Query replies

    public mutating func apply(vm d: VMDescription) { vm = VMInfo(d) }
    public mutating func apply(vm j: JSON) { apply(vm: VMDescription(json: j)) }

    public mutating func apply(memslots list: MemslotList) {
        memslots = list.memslots.map(MemslotRow.init)
        countPages()
        memslotsStale = false
    }
    public mutating func apply(memslots j: JSON) { apply(memslots: MemslotList(json: j)) }

    public mutating func apply(attributes a: AttributeRuns) {
        (runs, runsRepaired) = Self.normalised(a.runs)
        countPages()
        attributesStale = false
    }

    /// A peer's (or a file's) runs as every view needs them: sorted by address, none empty, none overlapping (a
    /// later run is clipped to where the one before it ends, or dropped), with what was done in words; nil when
    /// they were already so. O(n log n) only when they were not sorted.
    public static func normalised(_ input: [AttributeRun]) -> ([AttributeRun], String?) {
        var sorted = true, prevEnd: UInt64 = 0
        for (i, r) in input.enumerated() {
            if r.size == 0 || (i > 0 && r.gpa < prevEnd) { sorted = false; break }
            prevEnd = r.end
        }
        if sorted { return (input, nil) }
        var unsorted = 0, empty = 0, clipped = 0
        for i in input.indices.dropFirst() where input[i].gpa < input[i - 1].gpa { unsorted += 1 }
        var out: [AttributeRun] = []
        out.reserveCapacity(input.count)
        for r in input.sorted(by: { $0.gpa < $1.gpa }) {
            guard r.size > 0 else { empty += 1; continue }
            var r = r
            if let last = out.last, r.gpa < last.end {
                clipped += 1
                guard r.end > last.end else { continue }
                r = AttributeRun(gpa: last.end, size: r.end - last.end, isPrivate: r.isPrivate)
            }
            out.append(r)
        }
        let what = [unsorted > 0 ? "\(unsorted) out of order" : nil, clipped > 0 ? "\(clipped) overlapping" : nil,
                    empty > 0 ? "\(empty) empty" : nil].compactMap { $0 }.joined(separator: ", ")
        return (out, "attribute runs from the peer repaired (\(what)): sorted, overlaps clipped")
    }
    public mutating func apply(attributes j: JSON) { apply(attributes: AttributeRuns(json: j)) }

    public mutating func apply(vcpus list: VCPUList, intervalNs: UInt64) {
        apply(vcpus: list.vcpus.map(VCPURow.init), intervalNs: intervalNs)
    }
    public mutating func apply(vcpus j: JSON, intervalNs: UInt64) { apply(vcpus: VCPUList(json: j), intervalNs: intervalNs) }

    /// New vCPU rows; the old ones become `previousVCPUs` (changes highlighted, rates computed over `intervalNs`).
    public mutating func apply(vcpus rows: [VCPURow], intervalNs: UInt64) {
        previousVCPUs = vcpus
        // A peer or a file may claim any number of vCPUs (40,000 took replay --dump-at --text to 1.7 GB): the
        // views take KVM's own limit and say how many were left out.
        vcpus = rows.count > Self.maxVCPUs ? Array(rows.prefix(Self.maxVCPUs)) : rows
        vcpusLeftOut = rows.count - vcpus.count
        vcpuRefreshIntervalNs = intervalNs
    }

    /// Private/shared pages per memslot, from the runs (a slot in the shared alias counts its RAM pages).
    mutating func countPages() {
        // Every number here comes from the peer (or a recording): sums saturate rather than trap.
        let alias = aliasMask
        for i in memslots.indices {
            let start = memslots[i].ramStart(aliasMask: alias)
            let end = start.saturatingAdd(memslots[i].size)
            var p: UInt64 = 0, s: UInt64 = 0
            var k = firstRun(endingAfter: start)
            while k < runs.count && runs[k].gpa < end {
                let lo = max(start, runs[k].gpa), hi = min(end, runs[k].end)
                let overlap = hi > lo ? hi - lo : 0
                if runs[k].isPrivate { p = p.saturatingAdd(overlap) } else { s = s.saturatingAdd(overlap) }
                k += 1
            }
            memslots[i].privatePages = p / 4096
            memslots[i].sharedPages = s / 4096
        }
    }

    /// Index of the first run ending after `gpa` (runs are sorted and adjacent).
    public func firstRun(endingAfter gpa: UInt64) -> Int {
        runs.partitioningIndex { $0.end > gpa }
    }

    /// The attribute of the page at `gpa`, if RAM.
    public func attribute(at gpa: UInt64) -> Bool? {
        let k = firstRun(endingAfter: gpa)
        return k < runs.count && runs[k].gpa <= gpa ? runs[k].isPrivate : nil
    }

    /// The memslot mapping RAM address `gpa` (either view).
    public func memslot(containing gpa: UInt64) -> MemslotRow? {
        let alias = aliasMask
        return memslots.first { m in
            let start = m.ramStart(aliasMask: alias)
            return gpa >= start && gpa < start.saturatingAdd(m.size)
        }
    }

    // MARK: Events

    private mutating func countEvent(nowNs: UInt64) {
        let second = nowNs / 1_000_000_000
        if second != eventSecond {
            eventRate = second == eventSecond + 1 ? eventsThisSecond : 0
            eventsThisSecond = 0
            eventSecond = second
        }
        eventsThisSecond += 1
    }

    /// A `MEMORY_FAULT` event decoded by `FaultBatch.decodeEvent` (the same as `apply(event:)` with its JSON).
    /// A whole batch at once: the same state as appending its records one by one, with the buffer trimmed and
    /// filled in bulk (a batch holds up to a thousand records).
    public mutating func apply(faults batch: FaultBatch, nowNs: UInt64) {
        countEvent(nowNs: nowNs)
        faultsDropped = faultsDropped.saturatingAdd(batch.dropped)
        guard !batch.records.isEmpty else { return }
        store(batch.records)
        for f in batch.records { recentFaults.append(gfn: canonicalGFN(f), at: nowNs) }
        countFaults(batch.records.count, nowNs: nowNs)
    }

    /// Marks the VMM's own records that kernel tracepoint events saw too (one row, both sources): each event goes
    /// to the newest record not yet matched with the same exit, the same vCPU, the same page (where the event
    /// names one) and a time within `windowNs`. Looks at the newest 4096 records. Returns the events no record
    /// matched (the VMM's record may still be on its way: the caller retries them for a while).
    ///
    /// Each event costs a hash lookup, a binary search and at most `CorroborationIndex.probes` candidates, whatever
    /// the stream's rate (a scan of the newest records for every event froze the inspector at 100,000 faults/s).
    public mutating func corroborate(_ events: [TracedExit], windowNs: UInt64 = 20_000_000) -> [TracedExit] {
        var unmatched: [TracedExit] = []
        let lowest = faultBase &+ UInt64(max(0, faults.count - 4096))
        for e in events {
            let key = CorroborationIndex.Key(vcpu: e.vcpu, exit: e.exit.rawValue, page: e.gpa.map { $0 >> 12 })
            guard let positions = untraced.lists[key], !positions.isEmpty else { unmatched.append(e); continue }
            let newestAdmitted = e.timeNs.addingReportingOverflow(windowNs).overflow ? UInt64.max : e.timeNs + windowNs
            // The last position whose record is no newer than the window admits (a vCPU's records are in time order).
            var lo = 0, hi = positions.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if positions[mid].timeNs <= newestAdmitted { lo = mid + 1 } else { hi = mid }
            }
            var found: Int?
            var i = lo - 1, probes = 0
            while i >= 0 && probes < CorroborationIndex.probes && positions[i].position >= lowest {
                defer { i -= 1 }
                probes += 1
                let t = positions[i].timeNs
                let dt = t > e.timeNs ? t - e.timeNs : e.timeNs - t
                if t < e.timeNs && dt > windowNs { break }
                guard dt <= windowNs, !isTraced(positions[i].position) else { continue }
                found = i
                break
            }
            if let found {
                let position = positions[found].position
                faults[Int(position - faultBase)].tracedNs = e.timeNs
                untraced.lists[key]?.remove(at: found)
                untraced.entries -= 1
                faultsTraced += 1
            } else {
                unmatched.append(e)
            }
        }
        return unmatched
    }

    /// Puts a conversion the trace timed onto the memory-fault row of the exit that asked for it (the trace's own row,
    /// or the VMM's row the trace corroborated): the row of `vcpu` whose exit was traced at `exitNs`, among the newest
    /// 4096. False while there is none (the VMM's record comes over its socket after the trace saw the exit).
    public mutating func attach(conversionSteps steps: [ConversionStep: UInt64], memoryFaultExitNs exitNs: UInt64, vcpu: Int?) -> Bool {
        var i = faults.count - 1
        while i >= max(0, faults.count - 4096) {
            let f = faults[i]
            if f.exit == .memoryFault && f.vcpu == vcpu && (f.source == .trace ? f.timeNs : f.tracedNs) == exitNs {
                if conversionSteps.count >= 4096, let oldest = faults.first?.seq {
                    conversionSteps = conversionSteps.filter { $0.key >= oldest }
                    if conversionSteps.count >= 4096 { conversionSteps.removeAll() }
                }
                conversionSteps[f.seq] = steps
                return true
            }
            i -= 1
        }
        return false
    }

    /// Whether the record at absolute position `p` (`faultBase` + its index) is gone or already corroborated.
    private func isTraced(_ p: UInt64) -> Bool {
        guard p >= faultBase, p - faultBase < UInt64(faults.count) else { return true }
        return faults[Int(p - faultBase)].tracedNs != nil
    }

    /// Indexes the records at positions `from...` that a traced event may corroborate (not the trace's own); rebuilt
    /// from the kept records when stale entries outnumber them, so the index stays within 3 × `faultCapacity`.
    private mutating func indexUntraced(from: UInt64) {
        if untraced.entries > 2 * faultCapacity + 8192 {
            untraced = CorroborationIndex()
            indexRange(faultBase)
        } else {
            indexRange(from)
        }
    }

    private mutating func indexRange(_ from: UInt64) {
        var p = max(from, faultBase)
        let end = faultBase + UInt64(faults.count)
        while p < end {
            let f = faults[Int(p - faultBase)]
            if f.source != .trace && f.tracedNs == nil {
                let entry = CorroborationIndex.Entry(position: p, timeNs: f.timeNs)
                untraced.lists[.init(vcpu: f.vcpu, exit: f.exit.rawValue, page: f.gpa >> 12), default: []].append(entry)
                untraced.lists[.init(vcpu: f.vcpu, exit: f.exit.rawValue, page: nil), default: []].append(entry)
                untraced.entries += 2
            }
            p += 1
        }
    }

    /// Keeps the newest `faultCapacity` of the buffer and `records`, trimmed and filled in bulk.
    private mutating func store(_ records: [FaultRecord]) {
        let keep = min(records.count, faultCapacity)
        let overflow = faults.count + keep - faultCapacity
        if overflow > 0 { faults.removeFirst(overflow); faultBase += UInt64(overflow) }
        let first = faultBase + UInt64(faults.count)
        faults.append(contentsOf: records[(records.count - keep)...])
        faultsReceived += UInt64(records.count)
        if var told = story {
            for f in records { told.note(f, gfn: canonicalGFN(f)) }
            story = told
        }
        indexUntraced(from: first)
    }

    public mutating func apply(event e: JSON, nowNs: UInt64) {
        if let event = Event(message: e) { apply(event: event, nowNs: nowNs) }
    }

    public mutating func apply(event e: Event, nowNs: UInt64) {
        if case .memoryFault(let batch) = e {
            apply(faults: batch, nowNs: nowNs)
            return
        }
        countEvent(nowNs: nowNs)
        let layout = e.changesLayout
        if layout.memslots { memslotsStale = true }
        if layout.attributes { attributesStale = true }
        switch e {
        case .memslotsChanged(let generation):
            memslotGeneration = generation ?? memslotGeneration
        case .eventsDropped(let count, _):
            eventsDropped = eventsDropped.saturatingAdd(count)
        case .memoryAttributesChanged(let gpa, let size, let isPrivate, let cause, _):
            let mask = aliasMask
            story?.note(attributesChanged: gpa, size: size, isPrivate: isPrivate, cause: cause, aliasMask: mask)
        case .guestReport(_, let kind?, let value):
            let old = guestReports[kind] ?? (0, 0)
            guestReports[kind] = (old.count + 1, value)
        case .vcpuStateChanged(let i?, let s?, _):
            if let k = vcpus.firstIndex(where: { $0.index == i }) { vcpus[k].state = s }
        default:
            break
        }
    }

    /// The shared-alias mask of the VM (0 when it has none).
    public var aliasMask: UInt64 { vm.sharedAliasBit.flatMap { (0..<64).contains($0) ? UInt64(1) << UInt64($0) : nil } ?? 0 }

    /// The RAM page a fault names: an access through the shared alias names the page without the alias bit.
    public func canonicalGFN(_ f: FaultRecord) -> UInt64 { (f.gpa & ~aliasMask) / 4096 }

    public mutating func append(fault f: FaultRecord, nowNs: UInt64) {
        if faults.count >= faultCapacity { faults.removeFirst(); faultBase += 1 }
        faults.append(f)
        faultsReceived += 1
        if story != nil { let gfn = canonicalGFN(f); story?.note(f, gfn: gfn) }
        indexUntraced(from: faultBase + UInt64(faults.count - 1))
        recentFaults.append(gfn: canonicalGFN(f), at: nowNs)
        countFaults(1, nowNs: nowNs)
    }

    /// Records from before the session (a snapshot's): kept and marked at their own time, not counted as arrivals.
    mutating func appendHistory(_ records: [FaultRecord]) {
        store(records)
        for f in records { recentFaults.append(gfn: canonicalGFN(f), at: f.timeNs) }
    }

    private mutating func countFaults(_ n: Int, nowNs: UInt64) {
        let second = nowNs / 1_000_000_000
        if second != faultRateSecond {
            let shift = Int(min(second &- faultRateSecond, 60))
            faultRate.removeFirst(shift)
            faultRate.append(contentsOf: Array(repeating: 0, count: shift))
            faultRateSecond = second
        }
        faultRate[faultRate.count - 1] += n
    }

    /// The faults as the view keeps them (at most `faultCapacity`, newest last).
    public var visibleFaults: Deque<FaultRecord> { faults }
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
