import Foundation

/// The control protocol's commands, replies and events as Swift types (docs/control-protocol.md): the one place
/// their member names are spelled. The server encodes from these types and reads its arguments into them; the
/// client, the recorder, replay, the snapshot writer and the inspector decode into them.
///
/// Decoding a reply or an event is lenient, as a client of a newer peer must be: a member of the wrong type or
/// missing reads as absent (its default), members nobody knows are ignored, enum values nobody knows are kept as
/// `Open.unknown`. Decoding a command's arguments (the server's side) is strict: `Arguments` refuses what it
/// cannot read, with the member's name.

// MARK: Typed commands

/// A command: its name, its arguments both ways, and how its reply reads.
public protocol SchemaCommand: Sendable {
    associatedtype Reply: Sendable
    static var name: CommandName { get }
    /// The `arguments` member (nil: none).
    var arguments: JSON? { get }
    /// The server's reading of `arguments`: strict.
    init(_ a: inout Arguments) throws(CommandError)
    /// The client's reading of the reply's `return`.
    static func reply(_ j: JSON) -> Reply
}

/// Something with a JSON form both ways (replies, event payloads).
public protocol SchemaValue: Sendable {
    init(json: JSON)
    var json: JSON { get }
}

/// A command without arguments whose reply is a `SchemaValue`.
public protocol PlainQuery: SchemaCommand where Reply: SchemaValue { init() }
extension PlainQuery {
    public var arguments: JSON? { nil }
    public init(_ a: inout Arguments) throws(CommandError) { try a.finish(); self.init() }
    public static func reply(_ j: JSON) -> Reply { Reply(json: j) }
}

public struct QueryVM: PlainQuery {
    public typealias Reply = VMDescription
    public static let name = CommandName.queryVM
    public init() {}
}

public struct QueryMemslots: PlainQuery {
    public typealias Reply = MemslotList
    public static let name = CommandName.queryMemslots
    public init() {}
}

public struct QueryVCPUs: PlainQuery {
    public typealias Reply = VCPUList
    public static let name = CommandName.queryVCPUs
    public init() {}
}

public struct QueryMemoryAttributes: SchemaCommand {
    public static let name = CommandName.queryMemoryAttributes
    /// Both or neither: the range to describe (default: all of RAM).
    public var gpa: UInt64?
    public var size: UInt64?
    public init(gpa: UInt64? = nil, size: UInt64? = nil) { self.gpa = gpa; self.size = size }
    public var arguments: JSON? {
        guard let gpa, let size else { return nil }
        return .object([("gpa", .u(gpa)), ("size", .u(size))])
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        gpa = try a.optionalUInt64("gpa")
        size = try a.optionalUInt64("size")
        try a.finish()
        guard (gpa == nil) == (size == nil) else { throw CommandError(.genericError, "give both gpa and size, or neither") }
    }
    public static func reply(_ j: JSON) -> AttributeRuns { AttributeRuns(json: j) }
}

public struct SetMemoryAttributes: SchemaCommand {
    public static let name = CommandName.setMemoryAttributes
    public var gpa: UInt64
    public var size: UInt64
    public var toPrivate: Bool
    /// Discard the old backing (default true).
    public var discard: Bool?
    public init(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool? = nil) {
        self.gpa = gpa; self.size = size; self.toPrivate = toPrivate; self.discard = discard
    }
    public var arguments: JSON? {
        var m: [(String, JSON)] = [("gpa", .u(gpa)), ("size", .u(size)), ("private", .bool(toPrivate))]
        if let discard { m.append(("discard", .bool(discard))) }
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        gpa = try a.uint64("gpa")
        size = try a.uint64("size")
        toPrivate = try a.bool("private")
        discard = try a.optionalBool("discard")
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Conversion { Conversion(json: j) }

    public struct Conversion: SchemaValue, Equatable {
        public var runsChanged: Int
        public var durationNs: UInt64
        public init(runsChanged: Int, durationNs: UInt64) { self.runsChanged = runsChanged; self.durationNs = durationNs }
        public init(json j: JSON) { runsChanged = j["runs-changed"]?.intValue ?? 0; durationNs = j["duration-ns"]?.uint64Value ?? 0 }
        public var json: JSON { .object([("runs-changed", .i(runsChanged)), ("duration-ns", .u(durationNs))]) }
    }
}

public struct QueryMemoryFaults: SchemaCommand {
    public static let name = CommandName.queryMemoryFaults
    /// The newest `limit` records (server default 256).
    public var limit: Int?
    public init(limit: Int? = nil) { self.limit = limit }
    public var arguments: JSON? { limit.map { .object([("limit", .i($0))]) } }
    /// `capacity` bounds `limit` (the VMM's ring).
    public init(_ a: inout Arguments) throws(CommandError) { try self.init(&a, capacity: .max) }
    public init(_ a: inout Arguments, capacity: Int) throws(CommandError) {
        limit = try a.optionalInt("limit", in: 0...capacity)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> FaultList { FaultList(json: j) }
}

public struct QuerySnapshot: SchemaCommand {
    public static let name = CommandName.querySnapshot
    /// How many of the newest fault records to include (server default 256).
    public var faults: Int?
    public init(faults: Int? = nil) { self.faults = faults }
    public var arguments: JSON? { faults.map { .object([("faults", .i($0))]) } }
    public init(_ a: inout Arguments) throws(CommandError) { try self.init(&a, capacity: .max) }
    public init(_ a: inout Arguments, capacity: Int) throws(CommandError) {
        faults = try a.optionalInt("faults", in: 0...capacity)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> StateSnapshot { StateSnapshot(json: j) }
}

public struct VCPUControl: SchemaCommand {
    public static let name = CommandName.vcpuControl
    /// nil: every vCPU.
    public var index: Int?
    public var action: VCPUAction
    public init(index: Int?, action: VCPUAction) { self.index = index; self.action = action }
    public var arguments: JSON? {
        var m: [(String, JSON)] = []
        if let index { m.append(("index", .i(index))) }
        m.append(("action", .e(action)))
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        index = try a.optionalInt("index", in: 0...Int(Int32.max))
        action = try a.enumeration("action")
        try a.finish()
    }
    public static func reply(_ j: JSON) -> States { States(json: j) }

    /// The states the vCPUs are in afterwards.
    public struct States: SchemaValue, Equatable {
        public var vcpus: [(index: Int, state: Open<VCPURunState>)]
        public init(_ vcpus: [(index: Int, state: Open<VCPURunState>)]) { self.vcpus = vcpus }
        public init(json j: JSON) {
            vcpus = (j["vcpus"]?.arrayValue ?? []).compactMap { v in
                guard let i = v["index"]?.intValue else { return nil }
                return (i, v["state"]?.open() ?? .unknown("?"))
            }
        }
        public var json: JSON {
            .object([("vcpus", .array(vcpus.map { .object([("index", .i($0.index)), ("state", .e($0.state))]) }))])
        }
        public static func == (a: States, b: States) -> Bool {
            a.vcpus.map(\.index) == b.vcpus.map(\.index) && a.vcpus.map(\.state) == b.vcpus.map(\.state)
        }
    }
}

public struct InjectFault: SchemaCommand {
    public static let name = CommandName.injectFault
    public var kind: InjectionKind
    public var vcpu: Int?
    public var gpa: UInt64?
    public var size: UInt64?
    public init(kind: InjectionKind, vcpu: Int? = nil, gpa: UInt64? = nil, size: UInt64? = nil) {
        self.kind = kind; self.vcpu = vcpu; self.gpa = gpa; self.size = size
    }
    public var arguments: JSON? {
        var m: [(String, JSON)] = [("kind", .e(kind))]
        if let vcpu { m.append(("vcpu", .i(vcpu))) }
        if let gpa { m.append(("gpa", .u(gpa))) }
        if let size { m.append(("size", .u(size))) }
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        kind = try a.enumeration("kind")
        vcpu = try a.optionalInt("vcpu", in: 0...Int(Int32.max))
        gpa = try a.optionalUInt64("gpa")
        size = try a.optionalUInt64("size")
        try a.finish()
    }
    public static func reply(_ j: JSON) -> InjectionReport { InjectionReport(json: j) }
}

public struct ReadMemory: SchemaCommand {
    public static let name = CommandName.readMemory
    public var gpa: UInt64
    public var size: UInt64
    public var view: ReadView?
    public init(gpa: UInt64, size: UInt64, view: ReadView? = nil) { self.gpa = gpa; self.size = size; self.view = view }
    public var arguments: JSON? {
        var m: [(String, JSON)] = [("gpa", .u(gpa)), ("size", .u(size))]
        if let view { m.append(("view", .e(view))) }
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        gpa = try a.uint64("gpa")
        size = try a.uint64("size")
        view = try a.optionalEnum("view")
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Bytes { Bytes(json: j) }

    /// The bytes read, and through which view: `isPrivate` when every byte came through one, else nil and
    /// `views`, the runs read through each (`auto` across a private|shared boundary).
    public struct Bytes: SchemaValue, Equatable {
        public struct Run: Sendable, Equatable {
            public var offset: UInt64, size: UInt64, isPrivate: Bool
            public init(offset: UInt64, size: UInt64, isPrivate: Bool) { self.offset = offset; self.size = size; self.isPrivate = isPrivate }
        }
        public var bytes: [UInt8]
        public var views: [Run]
        public var isPrivate: Bool? { views.count == 1 ? views[0].isPrivate : nil }
        public init(bytes: [UInt8], views: [Run]) { self.bytes = bytes; self.views = views }
        public init(json j: JSON) {
            bytes = j["data"]?.stringValue.flatMap { Data(base64Encoded: $0).map { Array($0) } } ?? []
            if let p = j["private"]?.boolValue {
                views = [Run(offset: 0, size: UInt64(bytes.count), isPrivate: p)]
            } else {
                views = (j["views"]?.arrayValue ?? []).compactMap { v in
                    guard let o = v["offset"]?.uint64Value, let s = v["size"]?.uint64Value, let p = v["private"]?.boolValue else { return nil }
                    return Run(offset: o, size: s, isPrivate: p)
                }
            }
        }
        public var json: JSON {
            var m: [(String, JSON)] = [("data", .string(Data(bytes).base64EncodedString()))]
            if let p = isPrivate {
                m.append(("private", .bool(p)))
            } else {
                m.append(("private", .null))
                m.append(("views", .array(views.map { .object([("offset", .u($0.offset)), ("size", .u($0.size)), ("private", .bool($0.isPrivate))]) })))
            }
            return .object(m)
        }
    }
}

public struct SetFaultPolicy: SchemaCommand {
    public static let name = CommandName.setFaultPolicy
    public var policy: FaultPolicy
    public init(policy: FaultPolicy) { self.policy = policy }
    public var arguments: JSON? { .object([("policy", .e(policy))]) }
    public init(_ a: inout Arguments) throws(CommandError) {
        policy = try a.enumeration("policy")
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Empty { Empty(json: j) }
}

public struct QueryCommands: PlainQuery {
    public typealias Reply = Names
    public static let name = CommandName.queryCommands
    public init() {}
    public struct Names: SchemaValue, Equatable {
        public var names: [String]
        public init(_ names: [String]) { self.names = names }
        public init(json j: JSON) { names = (j.arrayValue ?? []).compactMap { $0["name"]?.stringValue } }
        public var json: JSON { .array(names.map { .object([("name", .string($0))]) }) }
    }
}

/// `qmp_capabilities`: leaves negotiation. vmscope offers no capabilities; `enable` naming any is refused.
public struct QMPCapabilities: SchemaCommand {
    public static let name = CommandName.qmpCapabilities
    public var enable: [String]?
    public init(enable: [String]? = nil) { self.enable = enable }
    public var arguments: JSON? { enable.map { .object([("enable", .array($0.map(JSON.string)))]) } }
    public init(_ a: inout Arguments) throws(CommandError) {
        enable = try a.optionalStringList("enable")
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Empty { Empty(json: j) }
}

/// A reply with nothing in it (`{}`).
public struct Empty: SchemaValue, Equatable {
    public init() {}
    public init(json: JSON) {}
    public var json: JSON { .object([]) }
}

// MARK: Replies

/// `query-vm`.
public struct VMDescription: SchemaValue, Equatable {
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
        name = j["name"]?.stringValue
        pid = j["pid"]?.intValue
        vmType = j["vm-type"]?.uint64Value
        attributeEngine = j["attribute-engine"]?.open()
        sharedAlias = j["shared-alias"]?.intValue
        ramSize = j["ram-size"]?.uint64Value ?? 0
        vcpus = j["vcpus"]?.intValue ?? 0
        mutationsAllowed = j["mutations-allowed"]?.boolValue ?? false
        faultInjectionAllowed = j["fault-injection-allowed"]?.boolValue ?? false
        memoryReadsAllowed = j["memory-reads-allowed"]?.boolValue ?? false
        faultPolicy = j["fault-policy"]?.open()
        kvmCapabilities = j["kvm-capabilities"]?.objectMembers ?? []
    }

    public var json: JSON { .object(members(inSnapshot: false)) }

    /// The members in the spec's order; `inSnapshot` leaves out those a snapshot's `vm` does not carry (`vm-type`,
    /// `memory-reads-allowed`, `kvm-capabilities`).
    public func members(inSnapshot: Bool) -> [(String, JSON)] {
        let all: [(String, JSON, snapshot: Bool)] = [
            ("name", .opt(name.map(JSON.string)), true), ("pid", .opt(pid.map(JSON.i)), true),
            ("vm-type", .opt(vmType.map(JSON.u)), false), ("attribute-engine", .opt(attributeEngine.map(JSON.e)), true),
            ("shared-alias", .opt(sharedAlias.map(JSON.i)), true), ("ram-size", .u(ramSize), true), ("vcpus", .i(vcpus), true),
            ("mutations-allowed", .bool(mutationsAllowed), true), ("fault-injection-allowed", .bool(faultInjectionAllowed), true),
            ("memory-reads-allowed", .bool(memoryReadsAllowed), false), ("fault-policy", .opt(faultPolicy.map(JSON.e)), true),
            ("kvm-capabilities", .object(kvmCapabilities), false),
        ]
        return all.filter { !inSnapshot || $0.snapshot }.map { ($0.0, $0.1) }
    }

    public static func == (a: VMDescription, b: VMDescription) -> Bool { a.json == b.json }
}

/// One memslot (`query-memslots`' elements).
public struct Memslot: Sendable, Equatable {
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
        guard let slot = j["slot"]?.intValue, let gpa = j["gpa"]?.uint64Value, let size = j["size"]?.uint64Value else { return nil }
        self.init(slot: slot, asID: j["as-id"]?.intValue ?? 0, gpa: gpa, size: size, flags: j["flags"]?.uint64Value ?? 0,
                  flagNames: j["flag-names"]?.arrayValue?.compactMap(\.stringValue) ?? [],
                  view: j["view"]?.open() ?? .unknown("?"), backing: j["backing"]?.open() ?? .unknown("?"),
                  guestMemfdOffset: j["guest-memfd-offset"]?.uint64Value, userspaceAddress: j["userspace-addr"]?.uint64Value ?? 0)
    }

    /// The members as the protocol writes them; `slot` is null where the slot number is not KVM's (QEMU's ranges, in
    /// snapshots).
    public func members(slotKnown: Bool = true) -> [(String, JSON)] {
        [
            ("slot", slotKnown ? .i(slot) : .null), ("as-id", .i(asID)), ("gpa", .u(gpa)), ("size", .u(size)),
            ("flags", .u(flags)), ("flag-names", .array(flagNames.map(JSON.string))), ("view", .e(view)),
            ("backing", .e(backing)), ("guest-memfd-offset", .opt(guestMemfdOffset.map(JSON.u))),
            ("userspace-addr", .u(userspaceAddress)),
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
    public var gpa: UInt64
    public var size: UInt64
    public var isPrivate: Bool
    /// The run's end, saturated: a peer's run that wraps past 2^64 ends at the top instead of trapping.
    @inlinable public var end: UInt64 { let (v, o) = gpa.addingReportingOverflow(size); return o ? .max : v }
    @inlinable public init(gpa: UInt64, size: UInt64, isPrivate: Bool) { self.gpa = gpa; self.size = size; self.isPrivate = isPrivate }
    public var description: String {
        "[0x\(String(gpa, radix: 16)), 0x\(String(end, radix: 16))) \(isPrivate ? "private" : "shared")"
    }
    public var json: JSON { .object([("gpa", .u(gpa)), ("size", .u(size)), ("private", .bool(isPrivate))]) }
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
        runs = (j[AttributesKey.runs]?.arrayValue ?? []).compactMap { r in
            guard let gpa = r["gpa"]?.uint64Value, let size = r["size"]?.uint64Value, let p = r["private"]?.boolValue else { return nil }
            return AttributeRun(gpa: gpa, size: size, isPrivate: p)
        }
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
    public var records: [FaultRecord]
    public var total: UInt64
    public var dropped: UInt64
    public init(records: [FaultRecord], total: UInt64, dropped: UInt64) { self.records = records; self.total = total; self.dropped = dropped }
    public init(json j: JSON) {
        records = (j[FaultsKey.records]?.arrayValue ?? []).compactMap(FaultRecord.init)
        total = j["total"]?.uint64Value ?? 0
        dropped = j[FaultsKey.dropped]?.uint64Value ?? 0
    }
    public var json: JSON {
        .object([(FaultsKey.records, .array(records.map(\.json))), ("total", .u(total)), (FaultsKey.dropped, .u(dropped))])
    }
}

/// A segment register (`sregs`' `cs` ... `ss`).
public struct SegmentRegister: Sendable, Equatable {
    public var selector: UInt64, base: UInt64, limit: UInt64, type: UInt64, dpl: UInt64, db: UInt64, l: UInt64
    public init(selector: UInt64, base: UInt64, limit: UInt64, type: UInt64, dpl: UInt64, db: UInt64, l: UInt64) {
        self.selector = selector; self.base = base; self.limit = limit; self.type = type; self.dpl = dpl; self.db = db; self.l = l
    }
    init?(json j: JSON?) {
        guard let j, let selector = j["selector"]?.uint64Value else { return nil }
        self.init(selector: selector, base: j["base"]?.uint64Value ?? 0, limit: j["limit"]?.uint64Value ?? 0,
                  type: j["type"]?.uint64Value ?? 0, dpl: j["dpl"]?.uint64Value ?? 0, db: j["db"]?.uint64Value ?? 0,
                  l: j["l"]?.uint64Value ?? 0)
    }
    var json: JSON {
        .object([("selector", .u(selector)), ("base", .u(base)), ("limit", .u(limit)), ("type", .u(type)), ("dpl", .u(dpl)),
                 ("db", .u(db)), ("l", .u(l))])
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
}

/// Member names a vCPU has in `query-vcpus` and in snapshots alike.
enum VCPUKey {
    static let index = "index", threadID = "thread-id", state = "state", lastExit = "last-exit", exitCounts = "exit-counts"
    static let regs = "regs", stats = "stats", guest = "guest"
}

/// One vCPU (`query-vcpus`' elements). Exit counts and statistics are named by KVM (exit reasons, binary stats),
/// registers by x86: kept as ordered pairs.
public struct VCPUStatus: Sendable, Equatable {
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
        specialRegisters = j["sregs"]?.objectMembers != nil ? SpecialRegisters(json: j["sregs"]!) : nil
        stats = Self.pairs(j[VCPUKey.stats])
        error = j["error"]?.stringValue
        guest = Self.pairs(j[VCPUKey.guest])
    }

    public var json: JSON {
        .object([
            (VCPUKey.index, .i(index)), (VCPUKey.threadID, .i(threadID)), (VCPUKey.state, .e(state)),
            (VCPUKey.lastExit, .string(lastExit)), (VCPUKey.exitCounts, Self.object(exitCounts)),
            (VCPUKey.regs, .opt(registers.map(Self.object))), ("sregs", .opt(specialRegisters?.json)),
            (VCPUKey.stats, Self.object(stats)), ("error", .opt(error.map(JSON.string))), (VCPUKey.guest, Self.object(guest)),
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
    public var kind: Open<InjectionKind>
    public var vcpu: Int?
    public var gpa: UInt64?
    public var size: UInt64?
    public var detail: String
    public init(kind: InjectionKind, vcpu: Int? = nil, gpa: UInt64? = nil, size: UInt64? = nil, detail: String) {
        self.kind = .known(kind); self.vcpu = vcpu; self.gpa = gpa; self.size = size; self.detail = detail
    }
    public init(json j: JSON) {
        kind = j["kind"]?.open() ?? .unknown("?")
        vcpu = j["vcpu"]?.intValue
        gpa = j["gpa"]?.uint64Value
        size = j["size"]?.uint64Value
        detail = j["detail"]?.stringValue ?? ""
    }
    public var json: JSON {
        .object([("kind", .e(kind)), ("vcpu", .opt(vcpu.map(JSON.i))), ("gpa", .opt(gpa.map(JSON.u))),
                 ("size", .opt(size.map(JSON.u))), ("detail", .string(detail))])
    }
}

// MARK: Events

/// An event as the protocol carries it: vmscope's, typed; anyone else's (a stock QEMU's `STOP`), by name with its
/// data as it came.
public enum Event: Sendable, Equatable {
    case memoryFault(FaultBatch)
    case memoryAttributesChanged(gpa: UInt64, size: UInt64, isPrivate: Bool, cause: Open<ConversionCause>, vcpu: Int?)
    case memslotsChanged(generation: UInt64?)
    case vcpuStateChanged(index: Int?, state: Open<VCPURunState>?, reason: String)
    case faultInjected(InjectionReport)
    case guestReport(vcpu: Int?, kind: String?, value: UInt64)
    /// Events the server (or, with `where`, this client) dropped.
    case eventsDropped(count: UInt64, where: String?)
    case other(name: String, data: JSON?)

    /// From a whole event message (`{"event": ..., "data": ..., "timestamp": ...}`); nil when it is not one.
    public init?(message e: JSON) {
        guard let name = e["event"]?.stringValue else { return nil }
        self.init(name: name, data: e["data"])
    }

    public init(name: String, data d: JSON?) {
        switch EventName(rawValue: name) {
        case .memoryFault?: self = .memoryFault(FaultBatch(data: d))
        case .memoryAttributesChanged?:
            self = .memoryAttributesChanged(gpa: d?["gpa"]?.uint64Value ?? 0, size: d?["size"]?.uint64Value ?? 0,
                                            isPrivate: d?["private"]?.boolValue ?? false,
                                            cause: d?["cause"]?.open() ?? .unknown("?"), vcpu: d?["vcpu"]?.intValue)
        case .memslotsChanged?: self = .memslotsChanged(generation: d?["generation"]?.uint64Value)
        case .vcpuStateChanged?:
            self = .vcpuStateChanged(index: d?["index"]?.intValue, state: d?["state"]?.open(), reason: d?["reason"]?.stringValue ?? "")
        case .faultInjected?: self = .faultInjected(InjectionReport(json: d ?? .null))
        case .guestReport?:
            self = .guestReport(vcpu: d?["vcpu"]?.intValue, kind: d?["kind"]?.stringValue, value: d?["value"]?.uint64Value ?? 0)
        case .eventsDropped?: self = .eventsDropped(count: d?["count"]?.uint64Value ?? 0, where: d?["where"]?.stringValue)
        case nil: self = .other(name: name, data: d)
        }
    }

    public var name: String {
        switch self {
        case .memoryFault: EventName.memoryFault.rawValue
        case .memoryAttributesChanged: EventName.memoryAttributesChanged.rawValue
        case .memslotsChanged: EventName.memslotsChanged.rawValue
        case .vcpuStateChanged: EventName.vcpuStateChanged.rawValue
        case .faultInjected: EventName.faultInjected.rawValue
        case .guestReport: EventName.guestReport.rawValue
        case .eventsDropped: EventName.eventsDropped.rawValue
        case .other(let n, _): n
        }
    }

    public var data: JSON? {
        switch self {
        case .memoryFault(let b): b.data
        case .memoryAttributesChanged(let gpa, let size, let p, let cause, let vcpu):
            .object([("gpa", .u(gpa)), ("size", .u(size)), ("private", .bool(p)), ("cause", .e(cause)), ("vcpu", .opt(vcpu.map(JSON.i)))])
        case .memslotsChanged(let g): .object([("generation", .opt(g.map(JSON.u)))])
        case .vcpuStateChanged(let i, let s, let r):
            .object([("index", .opt(i.map(JSON.i))), ("state", .opt(s.map(JSON.e))), ("reason", .string(r))])
        case .faultInjected(let r): r.json
        case .guestReport(let v, let k, let value):
            .object([("vcpu", .opt(v.map(JSON.i))), ("kind", .opt(k.map(JSON.string))), ("value", .u(value))])
        case .eventsDropped(let c, let w):
            .object([("count", .u(c))] + (w.map { [("where", JSON.string($0))] } ?? []))
        case .other(_, let d): d
        }
    }

    /// The event as a message, `timestamp` from `wallNs` (ns since the Unix epoch) when given.
    public func message(wallNs: UInt64? = nil) -> JSON { QMP.event(name, data, wallNs: wallNs) }

    /// Whether the views' memslots or attributes are out of date after this event.
    public var changesLayout: (memslots: Bool, attributes: Bool) {
        switch self {
        case .memoryAttributesChanged: (true, true)
        case .memslotsChanged: (true, false)
        default: (false, false)
        }
    }
}
