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

    public init() {}

    public init(_ j: JSON) {
        name = j["name"]?.stringValue ?? "?"
        pid = j["pid"]?.intValue
        engine = j["attribute-engine"]?.stringValue ?? "?"
        sharedAliasBit = j[Wire.sharedAlias.name]?.intValue
        ramSize = j["ram-size"]?.uint64Value ?? 0
        vcpus = j["vcpus"]?.intValue ?? 0
        mutationsAllowed = j["mutations-allowed"]?.boolValue ?? false
        faultInjectionAllowed = j["fault-injection-allowed"]?.boolValue ?? false
        policy = j[Wire.faultPolicy.name]?.stringValue ?? "?"
    }
}

public struct MemslotRow: Sendable, Equatable {
    public var slot: Int
    public var asID: Int
    public var gpa: UInt64
    public var size: UInt64
    public var flags: UInt64
    public var flagNames: [String]
    public var view: String
    public var backing: String
    public var guestMemfdOffset: UInt64?
    public var userspaceAddress: UInt64
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

    public init?(_ j: JSON) {
        guard let slot = j["slot"]?.intValue, let gpa = j["gpa"]?.uint64Value, let size = j["size"]?.uint64Value else { return nil }
        self.slot = slot
        self.asID = j["as-id"]?.intValue ?? 0
        self.gpa = gpa
        self.size = size
        self.flags = j["flags"]?.uint64Value ?? 0
        self.flagNames = j["flag-names"]?.arrayValue?.compactMap(\.stringValue) ?? []
        self.view = j["view"]?.stringValue ?? "?"
        self.backing = j["backing"]?.stringValue ?? "?"
        self.guestMemfdOffset = j["guest-memfd-offset"]?.uint64Value
        self.userspaceAddress = j["userspace-addr"]?.uint64Value ?? 0
    }

    /// A KVM-mapped range QEMU printed in `info mtree -f`: slot number unknown, type as backing.
    public init(qemu r: QEMUText.FlatRange, ordinal: Int, guestMemfd: Bool) {
        self.init(slot: ordinal, gpa: r.start, size: r.size, view: "plain",
                  backing: guestMemfd && r.type == "ram" ? "ram+guest_memfd" : r.type)
        slotKnown = false
        regionName = r.name
        regionOffset = r.offset
    }

    public init(slot: Int, gpa: UInt64, size: UInt64, view: String, backing: String, flagNames: [String] = []) {
        self.slot = slot
        self.asID = 0
        self.gpa = gpa
        self.size = size
        self.flags = 0
        self.flagNames = flagNames
        self.view = view
        self.backing = backing
        self.userspaceAddress = 0
    }
}

/// A run of RAM pages with one attribute, in bytes.
public struct RunRow: Sendable, Equatable {
    public var gpa: UInt64
    public var size: UInt64
    public var isPrivate: Bool
    /// The run's end, saturated: a peer's run that wraps past 2^64 ends at the top instead of trapping.
    public var end: UInt64 { gpa.saturatingAdd(size) }
    public init(gpa: UInt64, size: UInt64, isPrivate: Bool) { self.gpa = gpa; self.size = size; self.isPrivate = isPrivate }
}

public struct VCPURow: Sendable, Equatable {
    public var index: Int
    public var threadID: Int
    public var state: String
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

    static func pairs(_ j: JSON?) -> [(String, UInt64)] {
        (j?.objectMembers ?? []).compactMap { k, v in v.uint64Value.map { (k, $0) } }
    }

    public init?(_ j: JSON) {
        guard let index = j["index"]?.intValue else { return nil }
        self.index = index
        threadID = j["thread-id"]?.intValue ?? 0
        state = j["state"]?.stringValue ?? "?"
        lastExit = j["last-exit"]?.stringValue ?? "-"
        exitCounts = Self.pairs(j["exit-counts"])
        registers = Self.pairs(j["regs"])
        let sregs = j["sregs"]
        segments = ["cs", "ds", "es", "fs", "gs", "ss"].compactMap { name in sregs?[name]?["selector"]?.uint64Value.map { (name, $0) } }
        controlRegisters = ["cr0", "cr2", "cr3", "cr4", "efer"].compactMap { name in sregs?[name]?.uint64Value.map { (name, $0) } }
        stats = Self.pairs(j["stats"])
        guest = Self.pairs(j["guest"])
        error = j["error"]?.stringValue
    }

    public init(index: Int, threadID: Int = 0, state: String, lastExit: String, exitCounts: [(String, UInt64)] = [],
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
    public var memslots: [MemslotRow] = []
    public var runs: [RunRow] = []
    public var vcpus: [VCPURow] = []
    /// The vCPUs as of the previous refresh (changed values are highlighted, exit rates computed).
    public var previousVCPUs: [VCPURow] = []
    public var vcpuRefreshIntervalNs: UInt64 = 0
    /// The newest fault records, oldest first, at most `faultCapacity`.
    public private(set) var faults = Deque<FaultRow>()
    public let faultCapacity: Int
    /// Records the server said it dropped for us, and events it dropped.
    public var faultsDropped: UInt64 = 0
    public var eventsDropped: UInt64 = 0
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
    /// VM-wide KVM statistics where the peer reports them (QEMU's `query-stats` target `vm`).
    public var vmStats: [(String, UInt64)] = []

    public init(faultCapacity: Int = 100_000) { self.faultCapacity = faultCapacity }

    // MARK: Query replies

    public mutating func apply(vm j: JSON) { vm = VMInfo(j) }

    public mutating func apply(memslots j: JSON) {
        memslots = (j.arrayValue ?? []).compactMap(MemslotRow.init)
        countPages()
        memslotsStale = false
    }

    public mutating func apply(attributes j: JSON) {
        runs = (j["runs"]?.arrayValue ?? []).compactMap { r in
            guard let gpa = r["gpa"]?.uint64Value, let size = r["size"]?.uint64Value, let p = r["private"]?.boolValue else { return nil }
            return RunRow(gpa: gpa, size: size, isPrivate: p)
        }
        countPages()
        attributesStale = false
    }

    public mutating func apply(vcpus j: JSON, intervalNs: UInt64) {
        apply(vcpus: (j.arrayValue ?? []).compactMap(VCPURow.init), intervalNs: intervalNs)
    }

    /// New vCPU rows; the old ones become `previousVCPUs` (changes highlighted, rates computed over `intervalNs`).
    public mutating func apply(vcpus rows: [VCPURow], intervalNs: UInt64) {
        previousVCPUs = vcpus
        vcpus = rows
        vcpuRefreshIntervalNs = intervalNs
    }

    /// Private/shared pages per memslot, from the runs (a slot in the shared alias counts its RAM pages).
    mutating func countPages() {
        // Every number here comes from the peer (or a recording): sums saturate rather than trap.
        let alias = aliasMask
        for i in memslots.indices {
            var start = memslots[i].gpa
            if alias != 0 && memslots[i].view == "shared" { start &= ~alias }
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
            let start = alias != 0 && m.view == "shared" ? m.gpa & ~alias : m.gpa
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

    /// Keeps the newest `faultCapacity` of the buffer and `records`, trimmed and filled in bulk.
    private mutating func store(_ records: [FaultRow]) {
        let keep = min(records.count, faultCapacity)
        let overflow = faults.count + keep - faultCapacity
        if overflow > 0 { faults.removeFirst(overflow) }
        faults.append(contentsOf: records[(records.count - keep)...])
        faultsReceived += UInt64(records.count)
    }

    public mutating func apply(event e: JSON, nowNs: UInt64) {
        let data = e["data"]
        if e["event"]?.stringValue == "MEMORY_FAULT" {
            apply(faults: FaultBatch(data: data), nowNs: nowNs)
            return
        }
        countEvent(nowNs: nowNs)
        switch e["event"]?.stringValue {
        case "MEMORY_ATTRIBUTES_CHANGED":
            attributesStale = true
            memslotsStale = true
        case "MEMSLOTS_CHANGED":
            memslotGeneration = data?["generation"]?.uint64Value ?? memslotGeneration
            memslotsStale = true
        case "EVENTS_DROPPED":
            eventsDropped = eventsDropped.saturatingAdd(data?["count"]?.uint64Value ?? 0)
        case "GUEST_REPORT":
            if let kind = data?["kind"]?.stringValue {
                let old = guestReports[kind] ?? (0, 0)
                guestReports[kind] = (old.count + 1, data?["value"]?.uint64Value ?? 0)
            }
        case "VCPU_STATE_CHANGED":
            if let i = data?["index"]?.intValue, let s = data?["state"]?.stringValue,
               let k = vcpus.firstIndex(where: { $0.index == i }) {
                vcpus[k].state = s
            }
        default:
            break
        }
    }

    /// The shared-alias mask of the VM (0 when it has none).
    public var aliasMask: UInt64 { vm.sharedAliasBit.flatMap { (0..<64).contains($0) ? UInt64(1) << UInt64($0) : nil } ?? 0 }

    /// The RAM page a fault names: an access through the shared alias names the page without the alias bit.
    public func canonicalGFN(_ f: FaultRow) -> UInt64 { (f.gpa & ~aliasMask) / 4096 }

    public mutating func append(fault f: FaultRow, nowNs: UInt64) {
        if faults.count >= faultCapacity { faults.removeFirst() }
        faults.append(f)
        faultsReceived += 1
        recentFaults.append(gfn: canonicalGFN(f), at: nowNs)
        countFaults(1, nowNs: nowNs)
    }

    /// Records from before the session (a snapshot's): kept and marked at their own time, not counted as arrivals.
    mutating func appendHistory(_ records: [FaultRow]) {
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
    public var visibleFaults: Deque<FaultRow> { faults }
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
    }

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
    func saturatingAdd(_ other: UInt64) -> UInt64 {
        let (v, overflow) = addingReportingOverflow(other)
        return overflow ? .max : v
    }
}
