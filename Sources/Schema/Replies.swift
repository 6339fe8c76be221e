import Foundation

// MARK: Replies

/// `query-vm`.
public struct VMDescription: SchemaValue, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let name = "name", pid = "pid", vmType = "vm-type", attributeEngine = "attribute-engine"
        static let sharedAlias = "shared-alias", ramSize = "ram-size", vcpus = "vcpus"
        static let mutationsAllowed = "mutations-allowed", faultInjectionAllowed = "fault-injection-allowed"
        static let memoryReadsAllowed = "memory-reads-allowed", faultPolicy = "fault-policy"
        static let kvmCapabilities = "kvm-capabilities"
    }

    public var name: String?
    public var pid: Int?
    public var vmType: UInt64?
    public var attributeEngine: Open<AttributeEngineKind>?
    /// The shared-alias GPA bit (vmm engine), else nil.
    public var sharedAlias: Int?
    public var ramSize: UInt64
    public var vcpus: Int
    public var mutationsAllowed: Bool
    public var faultInjectionAllowed: Bool
    public var memoryReadsAllowed: Bool
    public var faultPolicy: Open<FaultPolicy>?
    /// `KVM_CAP_*` and friends, each under its KVM name, as the VMM probed them.
    public var kvmCapabilities: [(String, JSON)]

    public init(name: String?, pid: Int?, vmType: UInt64?, attributeEngine: AttributeEngineKind, sharedAlias: Int?, ramSize: UInt64,
                vcpus: Int, mutationsAllowed: Bool, faultInjectionAllowed: Bool, memoryReadsAllowed: Bool,
                faultPolicy: FaultPolicy, kvmCapabilities: [(String, JSON)]) {
        self.name = name; self.pid = pid; self.vmType = vmType; self.attributeEngine = .known(attributeEngine)
        self.sharedAlias = sharedAlias; self.ramSize = ramSize; self.vcpus = vcpus; self.mutationsAllowed = mutationsAllowed
        self.faultInjectionAllowed = faultInjectionAllowed; self.memoryReadsAllowed = memoryReadsAllowed
        self.faultPolicy = .known(faultPolicy); self.kvmCapabilities = kvmCapabilities
    }

    public init(json j: JSON) {
        name = j[Key.name]?.stringValue
        pid = j[Key.pid]?.intValue
        vmType = j[Key.vmType]?.uint64Value
        attributeEngine = j[Key.attributeEngine]?.open()
        sharedAlias = j[Key.sharedAlias]?.intValue
        ramSize = j[Key.ramSize]?.uint64Value ?? 0
        vcpus = j[Key.vcpus]?.intValue ?? 0
        mutationsAllowed = j[Key.mutationsAllowed]?.boolValue ?? false
        faultInjectionAllowed = j[Key.faultInjectionAllowed]?.boolValue ?? false
        memoryReadsAllowed = j[Key.memoryReadsAllowed]?.boolValue ?? false
        faultPolicy = j[Key.faultPolicy]?.open()
        kvmCapabilities = j[Key.kvmCapabilities]?.objectMembers ?? []
    }

    public var json: JSON { .object(members(inSnapshot: false)) }

    /// The members in the spec's order; `inSnapshot` leaves out those a snapshot's `vm` does not carry (`vm-type`,
    /// `memory-reads-allowed`, `kvm-capabilities`).
    public func members(inSnapshot: Bool) -> [(String, JSON)] {
        let all: [(String, JSON, snapshot: Bool)] = [
            (Key.name, .opt(name.map(JSON.string)), true), (Key.pid, .opt(pid.map(JSON.i)), true),
            (Key.vmType, .opt(vmType.map(JSON.u)), false), (Key.attributeEngine, .opt(attributeEngine.map(JSON.e)), true),
            (Key.sharedAlias, .opt(sharedAlias.map(JSON.i)), true), (Key.ramSize, .u(ramSize), true), (Key.vcpus, .i(vcpus), true),
            (Key.mutationsAllowed, .bool(mutationsAllowed), true), (Key.faultInjectionAllowed, .bool(faultInjectionAllowed), true),
            (Key.memoryReadsAllowed, .bool(memoryReadsAllowed), false), (Key.faultPolicy, .opt(faultPolicy.map(JSON.e)), true),
            (Key.kvmCapabilities, .object(kvmCapabilities), false),
        ]
        return all.filter { !inSnapshot || $0.snapshot }.map { ($0.0, $0.1) }
    }

    public static func == (a: VMDescription, b: VMDescription) -> Bool { a.json == b.json }
}

/// One memslot (`query-memslots`' elements).
public struct Memslot: Sendable, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let slot = "slot", gpa = "gpa", size = "size", asId = "as-id", flags = "flags"
        static let flagNames = "flag-names", view = "view", backing = "backing"
        static let guestMemfdOffset = "guest-memfd-offset", userspaceAddr = "userspace-addr"
    }

    public var slot: Int
    public var asID: Int
    public var gpa: UInt64
    public var size: UInt64
    public var flags: UInt64
    public var flagNames: [String]
    public var view: Open<MemslotView>
    public var backing: Open<MemslotBacking>
    public var guestMemfdOffset: UInt64?
    public var userspaceAddress: UInt64

    public init(slot: Int, asID: Int = 0, gpa: UInt64, size: UInt64, flags: UInt64 = 0, flagNames: [String] = [],
                view: Open<MemslotView>, backing: Open<MemslotBacking>, guestMemfdOffset: UInt64? = nil, userspaceAddress: UInt64 = 0) {
        self.slot = slot; self.asID = asID; self.gpa = gpa; self.size = size; self.flags = flags; self.flagNames = flagNames
        self.view = view; self.backing = backing; self.guestMemfdOffset = guestMemfdOffset; self.userspaceAddress = userspaceAddress
    }

    /// nil without `slot`, `gpa` and `size`.
    public init?(json j: JSON) {
        guard let slot = j[Key.slot]?.intValue, let gpa = j[Key.gpa]?.uint64Value, let size = j[Key.size]?.uint64Value else { return nil }
        self.init(slot: slot, asID: j[Key.asId]?.intValue ?? 0, gpa: gpa, size: size, flags: j[Key.flags]?.uint64Value ?? 0,
                  flagNames: j[Key.flagNames]?.arrayValue?.compactMap(\.stringValue) ?? [],
                  view: j[Key.view]?.open() ?? .unknown("?"), backing: j[Key.backing]?.open() ?? .unknown("?"),
                  guestMemfdOffset: j[Key.guestMemfdOffset]?.uint64Value, userspaceAddress: j[Key.userspaceAddr]?.uint64Value ?? 0)
    }

    /// The members as the protocol writes them; `slot` is null where the slot number is not KVM's (QEMU's ranges, in
    /// snapshots).
    public func members(slotKnown: Bool = true) -> [(String, JSON)] {
        [
            (Key.slot, slotKnown ? .i(slot) : .null), (Key.asId, .i(asID)), (Key.gpa, .u(gpa)), (Key.size, .u(size)),
            (Key.flags, .u(flags)), (Key.flagNames, .array(flagNames.map(JSON.string))), (Key.view, .e(view)),
            (Key.backing, .e(backing)), (Key.guestMemfdOffset, .opt(guestMemfdOffset.map(JSON.u))),
            (Key.userspaceAddr, .u(userspaceAddress)),
        ]
    }

    public var json: JSON { .object(members()) }
}

/// `query-memslots`.
public struct MemslotList: SchemaValue, Equatable {
    public var memslots: [Memslot]
    public init(_ memslots: [Memslot]) { self.memslots = memslots }
    public init(json j: JSON) { memslots = (j.arrayValue ?? []).compactMap(Memslot.init(json:)) }
    public var json: JSON { .array(memslots.map(\.json)) }
}

/// A run of RAM pages with one attribute, in bytes.
public struct AttributeRun: Sendable, Equatable, CustomStringConvertible {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let gpa = "gpa", size = "size", `private` = "private"
    }

    public var gpa: UInt64
    public var size: UInt64
    public var isPrivate: Bool
    /// The run's end, saturated: a peer's run that wraps past 2^64 ends at the top instead of trapping.
    @inlinable public var end: UInt64 { let (v, o) = gpa.addingReportingOverflow(size); return o ? .max : v }
    @inlinable public init(gpa: UInt64, size: UInt64, isPrivate: Bool) { self.gpa = gpa; self.size = size; self.isPrivate = isPrivate }
    public var description: String {
        "[0x\(String(gpa, radix: 16)), 0x\(String(end, radix: 16))) \(isPrivate ? "private" : "shared")"
    }
    public var json: JSON { .object([(Key.gpa, .u(gpa)), (Key.size, .u(size)), (Key.`private`, .bool(isPrivate))]) }
    /// nil without any of the three.
    init?(json r: JSON) {
        guard let gpa = r[Key.gpa]?.uint64Value, let size = r[Key.size]?.uint64Value, let p = r[Key.`private`]?.boolValue else { return nil }
        self.init(gpa: gpa, size: size, isPrivate: p)
    }
}

/// Member names of `query-memory-attributes`' reply, wherever its figures are written (also `query-metrics`).
enum AttributesKey {
    static let runs = "runs", privateBytes = "private-bytes", sharedBytes = "shared-bytes"
}

/// `query-memory-attributes`: the runs, and the private and shared bytes they add up to.
public struct AttributeRuns: SchemaValue, Equatable {
    public var runs: [AttributeRun]
    public var privateBytes: UInt64
    public var sharedBytes: UInt64
    public init(runs: [AttributeRun], privateBytes: UInt64, sharedBytes: UInt64) {
        self.runs = runs; self.privateBytes = privateBytes; self.sharedBytes = sharedBytes
    }
    public init(json j: JSON) {
        runs = (j[AttributesKey.runs]?.arrayValue ?? []).compactMap(AttributeRun.init(json:))
        privateBytes = j[AttributesKey.privateBytes]?.uint64Value ?? 0
        sharedBytes = j[AttributesKey.sharedBytes]?.uint64Value ?? 0
    }
    public var json: JSON {
        .object([(AttributesKey.runs, .array(runs.map(\.json))), (AttributesKey.privateBytes, .u(privateBytes)),
                 (AttributesKey.sharedBytes, .u(sharedBytes))])
    }
}

/// `query-memory-faults`' reply (and `query-snapshot`'s `faults`).
public struct FaultList: SchemaValue, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let total = "total"
    }

    public var records: [FaultRecord]
    public var total: UInt64
    public var dropped: UInt64
    public init(records: [FaultRecord], total: UInt64, dropped: UInt64) { self.records = records; self.total = total; self.dropped = dropped }
    public init(json j: JSON) {
        records = (j[FaultsKey.records]?.arrayValue ?? []).compactMap(FaultRecord.init)
        total = j[Key.total]?.uint64Value ?? 0
        dropped = j[FaultsKey.dropped]?.uint64Value ?? 0
    }
    public var json: JSON {
        .object([(FaultsKey.records, .array(records.map(\.json))), (Key.total, .u(total)), (FaultsKey.dropped, .u(dropped))])
    }
}

/// A segment register (`sregs`' `cs` ... `ss`).
public struct SegmentRegister: Sendable, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let selector = "selector", base = "base", limit = "limit", type = "type", dpl = "dpl", db = "db"
        static let l = "l"
    }

    public var selector: UInt64, base: UInt64, limit: UInt64, type: UInt64, dpl: UInt64, db: UInt64, l: UInt64
    public init(selector: UInt64, base: UInt64, limit: UInt64, type: UInt64, dpl: UInt64, db: UInt64, l: UInt64) {
        self.selector = selector; self.base = base; self.limit = limit; self.type = type; self.dpl = dpl; self.db = db; self.l = l
    }
    init?(json j: JSON?) {
        guard let j, let selector = j[Key.selector]?.uint64Value else { return nil }
        self.init(selector: selector, base: j[Key.base]?.uint64Value ?? 0, limit: j[Key.limit]?.uint64Value ?? 0,
                  type: j[Key.type]?.uint64Value ?? 0, dpl: j[Key.dpl]?.uint64Value ?? 0, db: j[Key.db]?.uint64Value ?? 0,
                  l: j[Key.l]?.uint64Value ?? 0)
    }
    var json: JSON {
        .object([(Key.selector, .u(selector)), (Key.base, .u(base)), (Key.limit, .u(limit)), (Key.type, .u(type)), (Key.dpl, .u(dpl)),
                 (Key.db, .u(db)), (Key.l, .u(l))])
    }
}

/// A vCPU's special registers, as far as the inspector shows them.
public struct SpecialRegisters: Sendable, Equatable {
    public enum Control: String, CaseIterable, Sendable { case cr0, cr2, cr3, cr4, efer }
    public enum SegmentName: String, CaseIterable, Sendable { case cs, ds, es, fs, gs, ss }
    public var control: [(Control, UInt64)]
    public var segments: [(SegmentName, SegmentRegister)]
    public init(control: [(Control, UInt64)], segments: [(SegmentName, SegmentRegister)]) { self.control = control; self.segments = segments }
    init(json j: JSON) {
        control = Control.allCases.compactMap { c in j[c.rawValue]?.uint64Value.map { (c, $0) } }
        segments = SegmentName.allCases.compactMap { s in SegmentRegister(json: j[s.rawValue]).map { (s, $0) } }
    }
    var json: JSON {
        .object(control.map { ($0.0.rawValue, .u($0.1)) } + segments.map { ($0.0.rawValue, $0.1.json) })
    }
    public static func == (a: SpecialRegisters, b: SpecialRegisters) -> Bool { a.json == b.json }
}

/// The built-in guest's counters, as it reports them on its ports (a vmscope extension of `query-vcpus`' `guest`).
public enum GuestCounter: String, SchemaEnum {
    case heartbeat, heartbeats, integrityErrors = "integrity-errors", bounceErrors = "bounce-errors", mceSeen = "mce-seen"
    case nmiSeen = "nmi-seen", exceptions, doorbellRequests = "doorbell-requests", doorbellFailures = "doorbell-failures"
    case hypercallRequests = "hypercall-requests"
}

/// What a `GUEST_REPORT` reports: the built-in guest's port writes (docs/control-protocol.md).
public enum GuestReportKind: String, SchemaEnum {
    case heartbeat, integrityError = "integrity-error", bounceError = "bounce-error", mceSeen = "mce-seen", nmiSeen = "nmi-seen"
    case exception, doorbellFailed = "doorbell-failed"
}

/// Member names a vCPU has in `query-vcpus` and in snapshots alike.
enum VCPUKey {
    static let index = "index", threadID = "thread-id", state = "state", lastExit = "last-exit", exitCounts = "exit-counts"
    static let regs = "regs", stats = "stats", guest = "guest"
}

/// One vCPU (`query-vcpus`' elements). Exit counts and statistics are named by KVM (exit reasons, binary stats),
/// registers by x86: kept as ordered pairs.
public struct VCPUStatus: Sendable, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let sregs = "sregs", error = "error"
    }

    public var index: Int
    public var threadID: Int
    public var state: Open<VCPURunState>
    public var lastExit: String
    public var exitCounts: [(String, UInt64)]
    public var registers: [(String, UInt64)]?
    public var specialRegisters: SpecialRegisters?
    public var stats: [(String, UInt64)]
    /// Why the vCPU is in state `error` (the exit and its data), else nil. vmscope extension.
    public var error: String?
    /// The built-in guest's counters, as pairs (a newer VMM's extra counters are kept). vmscope extension.
    public var guest: [(String, UInt64)]

    public init(index: Int, threadID: Int, state: Open<VCPURunState>, lastExit: String, exitCounts: [(String, UInt64)],
                registers: [(String, UInt64)]?, specialRegisters: SpecialRegisters?, stats: [(String, UInt64)], error: String?,
                guest: [(String, UInt64)]) {
        self.index = index; self.threadID = threadID; self.state = state; self.lastExit = lastExit; self.exitCounts = exitCounts
        self.registers = registers; self.specialRegisters = specialRegisters; self.stats = stats; self.error = error; self.guest = guest
    }

    static func pairs(_ j: JSON?) -> [(String, UInt64)] {
        (j?.objectMembers ?? []).compactMap { k, v in v.uint64Value.map { (k, $0) } }
    }
    static func object(_ p: [(String, UInt64)]) -> JSON { .object(p.map { ($0.0, .u($0.1)) }) }

    /// nil without `index`.
    public init?(json j: JSON) {
        guard let index = j[VCPUKey.index]?.intValue else { return nil }
        self.index = index
        threadID = j[VCPUKey.threadID]?.intValue ?? 0
        state = j[VCPUKey.state]?.open() ?? .unknown("?")
        lastExit = j[VCPUKey.lastExit]?.stringValue ?? "-"
        exitCounts = Self.pairs(j[VCPUKey.exitCounts])
        registers = j[VCPUKey.regs]?.objectMembers != nil ? Self.pairs(j[VCPUKey.regs]) : nil
        specialRegisters = j[Key.sregs]?.objectMembers != nil ? SpecialRegisters(json: j[Key.sregs]!) : nil
        stats = Self.pairs(j[VCPUKey.stats])
        error = j[Key.error]?.stringValue
        guest = Self.pairs(j[VCPUKey.guest])
    }

    public var json: JSON {
        .object([
            (VCPUKey.index, .i(index)), (VCPUKey.threadID, .i(threadID)), (VCPUKey.state, .e(state)),
            (VCPUKey.lastExit, .string(lastExit)), (VCPUKey.exitCounts, Self.object(exitCounts)),
            (VCPUKey.regs, .opt(registers.map(Self.object))), (Key.sregs, .opt(specialRegisters?.json)),
            (VCPUKey.stats, Self.object(stats)), (Key.error, .opt(error.map(JSON.string))), (VCPUKey.guest, Self.object(guest)),
        ])
    }

    public static func == (a: VCPUStatus, b: VCPUStatus) -> Bool { a.json == b.json }
}

/// `query-vcpus`.
public struct VCPUList: SchemaValue, Equatable {
    public var vcpus: [VCPUStatus]
    public init(_ vcpus: [VCPUStatus]) { self.vcpus = vcpus }
    public init(json j: JSON) { vcpus = (j.arrayValue ?? []).compactMap(VCPUStatus.init(json:)) }
    public var json: JSON { .array(vcpus.map(\.json)) }
}

/// Member names of a snapshot, each the reply of one query (also `query-metrics`' `memslots` and `vcpus`).
enum SnapshotKey {
    static let vm = "vm", memslots = "memslots", attributes = "attributes", faults = "faults", vcpus = "vcpus"
}

/// `query-snapshot`: everything at one instant (memslots, attributes and faults are one consistent cut).
public struct StateSnapshot: SchemaValue, Equatable {
    public var vm: VMDescription
    public var memslots: MemslotList
    public var attributes: AttributeRuns
    public var faults: FaultList
    public var vcpus: VCPUList
    public init(vm: VMDescription, memslots: MemslotList, attributes: AttributeRuns, faults: FaultList, vcpus: VCPUList) {
        self.vm = vm; self.memslots = memslots; self.attributes = attributes; self.faults = faults; self.vcpus = vcpus
    }
    public init(json j: JSON) {
        vm = VMDescription(json: j[SnapshotKey.vm] ?? .null)
        memslots = MemslotList(json: j[SnapshotKey.memslots] ?? .null)
        attributes = AttributeRuns(json: j[SnapshotKey.attributes] ?? .null)
        faults = FaultList(json: j[SnapshotKey.faults] ?? .null)
        vcpus = VCPUList(json: j[SnapshotKey.vcpus] ?? .null)
    }
    public var json: JSON {
        .object([(SnapshotKey.vm, vm.json), (SnapshotKey.memslots, memslots.json), (SnapshotKey.attributes, attributes.json),
                 (SnapshotKey.faults, faults.json), (SnapshotKey.vcpus, vcpus.json)])
    }
}

/// What an injection did (`inject-fault`'s reply and `FAULT_INJECTED`'s data).
public struct InjectionReport: SchemaValue, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let kind = "kind", vcpu = "vcpu", gpa = "gpa", size = "size", detail = "detail"
    }

    public var kind: Open<InjectionKind>
    public var vcpu: Int?
    public var gpa: UInt64?
    public var size: UInt64?
    public var detail: String
    public init(kind: InjectionKind, vcpu: Int? = nil, gpa: UInt64? = nil, size: UInt64? = nil, detail: String) {
        self.kind = .known(kind); self.vcpu = vcpu; self.gpa = gpa; self.size = size; self.detail = detail
    }
    public init(json j: JSON) { self.init(reading: j) }

    /// From a report as it came (none: every member reads as absent).
    init<R: JSONReading>(reading j: R?) {
        kind = j?[Key.kind]?.schemaValue() ?? .unknown("?")
        vcpu = j?[Key.vcpu]?.intValue
        gpa = j?[Key.gpa]?.uint64Value
        size = j?[Key.size]?.uint64Value
        detail = j?[Key.detail]?.stringValue ?? ""
    }
    public var json: JSON {
        .object([(Key.kind, .e(kind)), (Key.vcpu, .opt(vcpu.map(JSON.i))), (Key.gpa, .opt(gpa.map(JSON.u))),
                 (Key.size, .opt(size.map(JSON.u))), (Key.detail, .string(detail))])
    }
}

/// Which query a reply answers, from its shape alone: for a session read without its commands (the fuzzer's, a
/// recording's stray line). The members looked at are the ones only that reply has.
public enum ReplyShape: Sendable, Equatable {
    case snapshot, vm, attributes, memslots, vcpus

    /// By a member only that reply has (each spelled where its type spells it).
    public init?(of r: JSON) {
        if r[SnapshotKey.vm] != nil { self = .snapshot }
        else if r[VMDescription.Key.ramSize] != nil || r[VMDescription.Key.vcpus] != nil { self = .vm }
        else if r[AttributesKey.runs] != nil { self = .attributes }
        else if let first = r.arrayValue?.first {
            if first[Memslot.Key.slot] != nil { self = .memslots }
            else if first[VCPUKey.exitCounts] != nil || first[VCPUKey.state] != nil { self = .vcpus }
            else { return nil }
        } else { return nil }
    }
}
