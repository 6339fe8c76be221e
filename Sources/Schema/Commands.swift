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
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let gpa = "gpa", size = "size"
    }

    public static let name = CommandName.queryMemoryAttributes
    /// Both or neither: the range to describe (default: all of RAM).
    public var gpa: UInt64?
    public var size: UInt64?
    public init(gpa: UInt64? = nil, size: UInt64? = nil) { self.gpa = gpa; self.size = size }
    public var arguments: JSON? {
        guard let gpa, let size else { return nil }
        return .object([(Key.gpa, .u(gpa)), (Key.size, .u(size))])
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        gpa = try a.optionalUInt64(Key.gpa)
        size = try a.optionalUInt64(Key.size)
        try a.finish()
        guard (gpa == nil) == (size == nil) else { throw CommandError(.genericError, "give both gpa and size, or neither") }
    }
    public static func reply(_ j: JSON) -> AttributeRuns { AttributeRuns(json: j) }
}

public struct SetMemoryAttributes: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let runsChanged = "runs-changed", durationNs = "duration-ns", gpa = "gpa", size = "size"
        static let `private` = "private", discard = "discard"
    }

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
        var m: [(String, JSON)] = [(Key.gpa, .u(gpa)), (Key.size, .u(size)), (Key.`private`, .bool(toPrivate))]
        if let discard { m.append((Key.discard, .bool(discard))) }
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        gpa = try a.uint64(Key.gpa)
        size = try a.uint64(Key.size)
        toPrivate = try a.bool(Key.`private`)
        discard = try a.optionalBool(Key.discard)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Conversion { Conversion(json: j) }

    public struct Conversion: SchemaValue, Equatable {
        public var runsChanged: Int
        public var durationNs: UInt64
        public init(runsChanged: Int, durationNs: UInt64) { self.runsChanged = runsChanged; self.durationNs = durationNs }
        public init(json j: JSON) { runsChanged = j[Key.runsChanged]?.intValue ?? 0; durationNs = j[Key.durationNs]?.uint64Value ?? 0 }
        public var json: JSON { .object([(Key.runsChanged, .i(runsChanged)), (Key.durationNs, .u(durationNs))]) }
    }
}

public struct QueryMemoryFaults: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let limit = "limit"
    }

    public static let name = CommandName.queryMemoryFaults
    /// The newest `limit` records (server default 256).
    public var limit: Int?
    public init(limit: Int? = nil) { self.limit = limit }
    public var arguments: JSON? { limit.map { .object([(Key.limit, .i($0))]) } }
    /// `capacity` bounds `limit` (the VMM's ring).
    public init(_ a: inout Arguments) throws(CommandError) { try self.init(&a, capacity: .max) }
    public init(_ a: inout Arguments, capacity: Int) throws(CommandError) {
        limit = try a.optionalInt(Key.limit, in: 0...capacity)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> FaultList { FaultList(json: j) }
}

public struct QuerySnapshot: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let faults = "faults"
    }

    public static let name = CommandName.querySnapshot
    /// How many of the newest fault records to include (server default 256).
    public var faults: Int?
    public init(faults: Int? = nil) { self.faults = faults }
    public var arguments: JSON? { faults.map { .object([(Key.faults, .i($0))]) } }
    public init(_ a: inout Arguments) throws(CommandError) { try self.init(&a, capacity: .max) }
    public init(_ a: inout Arguments, capacity: Int) throws(CommandError) {
        faults = try a.optionalInt(Key.faults, in: 0...capacity)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> StateSnapshot { StateSnapshot(json: j) }
}

public struct VCPUControl: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let vcpus = "vcpus", index = "index", state = "state", action = "action"
    }

    public static let name = CommandName.vcpuControl
    /// nil: every vCPU.
    public var index: Int?
    public var action: VCPUAction
    public init(index: Int?, action: VCPUAction) { self.index = index; self.action = action }
    public var arguments: JSON? {
        var m: [(String, JSON)] = []
        if let index { m.append((Key.index, .i(index))) }
        m.append((Key.action, .e(action)))
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        index = try a.optionalInt(Key.index, in: 0...Int(Int32.max))
        action = try a.enumeration(Key.action)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> States { States(json: j) }

    /// The states the vCPUs are in afterwards.
    public struct States: SchemaValue, Equatable {
        public var vcpus: [(index: Int, state: Open<VCPURunState>)]
        public init(_ vcpus: [(index: Int, state: Open<VCPURunState>)]) { self.vcpus = vcpus }
        public init(json j: JSON) {
            vcpus = (j[Key.vcpus]?.arrayValue ?? []).compactMap { v in
                guard let i = v[Key.index]?.intValue else { return nil }
                return (i, v[Key.state]?.open() ?? .unknown("?"))
            }
        }
        public var json: JSON {
            .object([(Key.vcpus, .array(vcpus.map { .object([(Key.index, .i($0.index)), (Key.state, .e($0.state))]) }))])
        }
        public static func == (a: States, b: States) -> Bool {
            a.vcpus.map(\.index) == b.vcpus.map(\.index) && a.vcpus.map(\.state) == b.vcpus.map(\.state)
        }
    }
}

public struct InjectFault: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let kind = "kind", vcpu = "vcpu", gpa = "gpa", size = "size"
    }

    public static let name = CommandName.injectFault
    public var kind: InjectionKind
    public var vcpu: Int?
    public var gpa: UInt64?
    public var size: UInt64?
    public init(kind: InjectionKind, vcpu: Int? = nil, gpa: UInt64? = nil, size: UInt64? = nil) {
        self.kind = kind; self.vcpu = vcpu; self.gpa = gpa; self.size = size
    }
    public var arguments: JSON? {
        var m: [(String, JSON)] = [(Key.kind, .e(kind))]
        if let vcpu { m.append((Key.vcpu, .i(vcpu))) }
        if let gpa { m.append((Key.gpa, .u(gpa))) }
        if let size { m.append((Key.size, .u(size))) }
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        kind = try a.enumeration(Key.kind)
        vcpu = try a.optionalInt(Key.vcpu, in: 0...Int(Int32.max))
        gpa = try a.optionalUInt64(Key.gpa)
        size = try a.optionalUInt64(Key.size)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> InjectionReport { InjectionReport(json: j) }
}

public struct ReadMemory: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let data = "data", `private` = "private", views = "views", offset = "offset", size = "size"
        static let gpa = "gpa", view = "view"
    }

    public static let name = CommandName.readMemory
    public var gpa: UInt64
    public var size: UInt64
    public var view: ReadView?
    public init(gpa: UInt64, size: UInt64, view: ReadView? = nil) { self.gpa = gpa; self.size = size; self.view = view }
    public var arguments: JSON? {
        var m: [(String, JSON)] = [(Key.gpa, .u(gpa)), (Key.size, .u(size))]
        if let view { m.append((Key.view, .e(view))) }
        return .object(m)
    }
    public init(_ a: inout Arguments) throws(CommandError) {
        gpa = try a.uint64(Key.gpa)
        size = try a.uint64(Key.size)
        view = try a.optionalEnum(Key.view)
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
            bytes = j[Key.data]?.stringValue.flatMap { Data(base64Encoded: $0).map { Array($0) } } ?? []
            if let p = j[Key.`private`]?.boolValue {
                views = [Run(offset: 0, size: UInt64(bytes.count), isPrivate: p)]
            } else {
                views = (j[Key.views]?.arrayValue ?? []).compactMap { v in
                    guard let o = v[Key.offset]?.uint64Value, let s = v[Key.size]?.uint64Value, let p = v[Key.`private`]?.boolValue else { return nil }
                    return Run(offset: o, size: s, isPrivate: p)
                }
            }
        }
        public var json: JSON {
            var m: [(String, JSON)] = [(Key.data, .string(Data(bytes).base64EncodedString()))]
            if let p = isPrivate {
                m.append((Key.`private`, .bool(p)))
            } else {
                m.append((Key.`private`, .null))
                m.append((Key.views, .array(views.map { .object([(Key.offset, .u($0.offset)), (Key.size, .u($0.size)), (Key.`private`, .bool($0.isPrivate))]) })))
            }
            return .object(m)
        }
    }
}

public struct SetFaultPolicy: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let policy = "policy"
    }

    public static let name = CommandName.setFaultPolicy
    public var policy: FaultPolicy
    public init(policy: FaultPolicy) { self.policy = policy }
    public var arguments: JSON? { .object([(Key.policy, .e(policy))]) }
    public init(_ a: inout Arguments) throws(CommandError) {
        policy = try a.enumeration(Key.policy)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Empty { Empty(json: j) }
}

public struct QueryCommands: PlainQuery {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let name = "name"
    }

    public typealias Reply = Names
    public static let name = CommandName.queryCommands
    public init() {}
    public struct Names: SchemaValue, Equatable {
        public var names: [String]
        public init(_ names: [String]) { self.names = names }
        public init(json j: JSON) { names = (j.arrayValue ?? []).compactMap { $0[Key.name]?.stringValue } }
        public var json: JSON { .array(names.map { .object([(Key.name, .string($0))]) }) }
    }
}

/// `qmp_capabilities`: leaves negotiation. vmscope offers no capabilities; `enable` naming any is refused.
public struct QMPCapabilities: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let enable = "enable"
    }

    public static let name = CommandName.qmpCapabilities
    public var enable: [String]?
    public init(enable: [String]? = nil) { self.enable = enable }
    public var arguments: JSON? { enable.map { .object([(Key.enable, .array($0.map(JSON.string)))]) } }
    public init(_ a: inout Arguments) throws(CommandError) {
        enable = try a.optionalStringList(Key.enable)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> Empty { Empty(json: j) }
}

/// vmscope's: whether this connection is sent events from now on (a new one is, as QMP's are). A client that only
/// asks, such as an exporter polling `query-metrics` every second, turns them off and keeps its connection: it is
/// sent no fault batch it would only read to throw away, and the VMM encodes none for it. Turned on again, events
/// come from then on (none of those sent while off is owed, nor counted as dropped).
public struct SetEvents: SchemaCommand {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let enabled = "enabled"
    }

    public static let name = CommandName.setEvents
    public var enabled: Bool
    public init(enabled: Bool) { self.enabled = enabled }
    public var arguments: JSON? { .object([(Key.enabled, .bool(enabled))]) }
    public init(_ a: inout Arguments) throws(CommandError) {
        enabled = try a.bool(Key.enabled)
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
