import Foundation

/// One memory fault (docs/control-protocol.md, "Fault record"): what the VMM appends to its ring, the server
/// encodes, and the client, the recorder, replay and the inspector decode. One type on both sides.
public struct FaultRecord: Sendable, Equatable {
    /// Per VM, from 1, no gaps.
    public var seq: UInt64
    /// CLOCK_MONOTONIC of the fault, ns.
    public var timeNs: UInt64
    public var vcpu: Int?
    public var gpa: UInt64
    public var size: UInt64
    /// Raw `memory_fault.flags` (kernel), or the same bit positions the kernel would set (vmm).
    public var flags: UInt64
    /// The access wanted private memory.
    public var isPrivate: Bool
    public var access: Open<FaultAccess>
    /// errno name for kernel exits (`EFAULT`, `EHWPOISON`), else nil.
    public var errno: String?
    public var source: Open<FaultSource>
    /// The KVM exit the record came from.
    public var exit: Open<FaultExit>
    /// The GFN's attribute when it faulted.
    public var attribute: Open<PageAttribute>
    /// The memslot involved, if any.
    public var slot: Int?
    public var action: Open<FaultAction>
    /// When a trace source runs beside the VMM: the time (CLOCK_MONOTONIC, ns) of the kernel tracepoint event that
    /// saw this same exit (`kvm_mmio` for an MMIO exit, `kvm_userspace_exit` for a memory-fault exit), so one row shows
    /// both sources. The inspector's own: never on the wire, never in a recording.
    public var tracedNs: UInt64?

    public var gfn: UInt64 { gpa / 4096 }

    /// `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
    public static let flagPrivate: UInt64 = 1 << 3

    /// A record with nothing set yet (the decoders fill it member by member; a member a peer left out reads as
    /// `?`, shown as such).
    init(empty: ()) {
        self.init(placeholders: ())
        source = .unknown("?"); exit = .unknown("?"); attribute = .unknown("?"); action = .unknown("?")
    }

    /// A record to be read into (`read`): what `read` does not set stands in for what it will, and holds no
    /// string (so making one is a few stores).
    init(placeholders: ()) {
        seq = 0; gpa = 0; timeNs = 0; vcpu = nil; size = 0; flags = 0; isPrivate = false; access = .known(.unknown)
        errno = nil; source = .known(.vmm); exit = .known(.none); attribute = .known(.none); slot = nil; action = .known(.reported)
    }

    public init(seq: UInt64 = 0, timeNs: UInt64, vcpu: Int?, gpa: UInt64, size: UInt64 = 4096, flags: UInt64,
                isPrivate: Bool? = nil, access: FaultAccess, errno: String? = nil, source: FaultSource, exit: FaultExit,
                attribute: PageAttribute, slot: Int?, action: FaultAction) {
        self.seq = seq
        self.timeNs = timeNs
        self.vcpu = vcpu
        self.gpa = gpa
        self.size = size
        self.flags = flags
        self.isPrivate = isPrivate ?? (flags & Self.flagPrivate != 0)
        self.access = .known(access)
        self.errno = errno
        self.source = .known(source)
        self.exit = .known(exit)
        self.attribute = .known(attribute)
        self.slot = slot
        self.action = .known(action)
    }

    /// A record from values as a peer might send them (tests and fixtures: any text for the enumerations).
    public init(seq: UInt64, timeNs: UInt64 = 0, vcpu: Int?, gpa: UInt64, flags: UInt64, access: Open<FaultAccess>,
                source: Open<FaultSource> = .known(.vmm), exit: Open<FaultExit> = .known(.mmio),
                attribute: Open<PageAttribute> = .known(.shared), slot: Int? = nil, action: Open<FaultAction> = .known(.converted)) {
        self.init(empty: ())
        self.seq = seq; self.timeNs = timeNs; self.vcpu = vcpu; self.gpa = gpa; self.size = 4096; self.flags = flags
        self.isPrivate = flags & Self.flagPrivate != 0
        self.access = access; self.source = source; self.exit = exit; self.attribute = attribute; self.slot = slot; self.action = action
    }

    /// The members a record has, in the order the spec lists them; `seq` and `gpa` are required.
    public enum Member: Int, CaseIterable, Sendable {
        case seq, timeNs, vcpu, gpa, size, flags, isPrivate, access, errno, source, exit, attribute, slot, action

        var key: StaticString {
            switch self {
            case .seq: "seq"
            case .timeNs: "time-ns"
            case .vcpu: "vcpu"
            case .gpa: "gpa"
            case .size: "size"
            case .flags: "flags"
            case .isPrivate: "private"
            case .access: "access"
            case .errno: "errno"
            case .source: "source"
            case .exit: "exit"
            case .attribute: "attribute"
            case .slot: "slot"
            case .action: "action"
            }
        }

        public var name: String { key.description }

        /// The name as a writer takes it (`JSONObjectRecord`), written as the literal it is.
        public var jsonName: JSONName { JSONName(stringLiteral: key) }

        static func named(_ bytes: UnsafeBufferPointer<UInt8>) -> Member? {
            guard let first = bytes.first, let last = bytes.last else { return nil }
            // Length, first and last byte tell the members apart; one comparison confirms.
            let m: Member
            switch (bytes.count, first, last) {
            case (3, UInt8(ascii: "s"), _): m = .seq
            case (7, UInt8(ascii: "t"), _): m = .timeNs
            case (4, UInt8(ascii: "v"), _): m = .vcpu
            case (3, UInt8(ascii: "g"), _): m = .gpa
            case (4, UInt8(ascii: "s"), UInt8(ascii: "e")): m = .size
            case (5, UInt8(ascii: "f"), _): m = .flags
            case (7, UInt8(ascii: "p"), _): m = .isPrivate
            case (6, UInt8(ascii: "a"), UInt8(ascii: "s")): m = .access
            case (5, UInt8(ascii: "e"), _): m = .errno
            case (6, UInt8(ascii: "s"), _): m = .source
            case (4, UInt8(ascii: "e"), _): m = .exit
            case (9, UInt8(ascii: "a"), _): m = .attribute
            case (4, UInt8(ascii: "s"), UInt8(ascii: "t")): m = .slot
            case (6, UInt8(ascii: "a"), UInt8(ascii: "n")): m = .action
            default: return nil
            }
            return m.isNamed(bytes) ? m : nil
        }

        /// The member the spec lists after this one (the last: the first).
        @inline(__always) var following: Member {
            switch self {
            case .seq: .timeNs
            case .timeNs: .vcpu
            case .vcpu: .gpa
            case .gpa: .size
            case .size: .flags
            case .flags: .isPrivate
            case .isPrivate: .access
            case .access: .errno
            case .errno: .source
            case .source: .exit
            case .exit: .attribute
            case .attribute: .slot
            case .slot: .action
            case .action: .seq
            }
        }

        /// Whether `bytes` is this member's name (compared in place: names are a few bytes).
        @inline(__always) func isNamed(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
            let k = key
            return k.utf8CodeUnitCount == bytes.count && sameBytes(k.utf8Start, bytes.baseAddress!, bytes.count)
        }
    }

    static let required: UInt32 = 1 << Member.seq.rawValue | 1 << Member.gpa.rawValue

    /// The enumerations' wire texts, for reading them without making strings.
    static let accessNames = WireNames<FaultAccess>(), sourceNames = WireNames<FaultSource>()
    static let exitNames = WireNames<FaultExit>(), attributeNames = WireNames<PageAttribute>()
    static let actionNames = WireNames<FaultAction>()

    /// Sets one member from its JSON value (a value of the wrong type reads as absent).
    @inline(__always) mutating func set<R: JSONReading>(_ m: Member, _ v: R) -> Bool {
        switch m {
        case .seq: if let x = v.uint64Value { seq = x } else { return false }
        case .timeNs: timeNs = v.uint64Value ?? 0
        case .vcpu: vcpu = v.intValue
        case .gpa: if let x = v.uint64Value { gpa = x } else { return false }
        case .size: size = v.uint64Value ?? 0
        case .flags: flags = v.uint64Value ?? 0
        case .isPrivate: isPrivate = v.boolValue ?? false
        case .access: access = v.open(Self.accessNames) ?? .known(.unknown)
        case .errno: errno = v.stringValue
        case .source: source = v.open(Self.sourceNames) ?? .unknown("?")
        case .exit: exit = v.open(Self.exitNames) ?? .unknown("?")
        case .attribute: attribute = v.open(Self.attributeNames) ?? .unknown("?")
        case .slot: slot = v.intValue
        case .action: action = v.open(Self.actionNames) ?? .unknown("?")
        }
        return true
    }

    /// The record as the protocol writes it (every member, in the spec's order).
    public var json: JSON {
        .object(Member.allCases.map { m in
            let v: JSON = switch m {
            case .seq: .u(seq)
            case .timeNs: .u(timeNs)
            case .vcpu: .opt(vcpu.map(JSON.i))
            case .gpa: .u(gpa)
            case .size: .u(size)
            case .flags: .u(flags)
            case .isPrivate: .bool(isPrivate)
            case .access: .e(access)
            case .errno: .opt(errno.map(JSON.string))
            case .source: .e(source)
            case .exit: .e(exit)
            case .attribute: .e(attribute)
            case .slot: .opt(slot.map(JSON.i))
            case .action: .e(action)
            }
            return (m.name, v)
        })
    }

    /// A record from its JSON; nil without `seq` and `gpa`. Members it does not know are ignored.
    public init?(_ j: JSON) { self.init(reading: j) }

    init?<R: JSONReading>(reading j: R) {
        var r = FaultRecord(placeholders: ())
        guard r.read(j) else { return nil }
        self = r
    }

    /// Sets the members `j` has, and `?` for the enumerations it lacks (this record is `init(placeholders:)`'s);
    /// false when `j` is not a record (not an object, or without `seq` or `gpa`).
    @inline(__always) mutating func read<R: JSONReading>(_ j: R) -> Bool {
        guard j.isObject else { return false }
        var have: UInt32 = 0
        // Members come in the spec's order from the VMM: the next one is tried first.
        var next = Member.seq
        j.forEachMember { name, v in
            let m: Member
            if next.isNamed(name) { m = next } else if let named = Member.named(name) { m = named } else { return }
            next = m.following
            if set(m, v) { have |= 1 << m.rawValue }
        }
        guard have & Self.required == Self.required else { return false }
        let lacking = ~have
        if lacking & Self.placeheld != 0 {
            if lacking & 1 << Member.source.rawValue != 0 { source = .unknown("?") }
            if lacking & 1 << Member.exit.rawValue != 0 { exit = .unknown("?") }
            if lacking & 1 << Member.attribute.rawValue != 0 { attribute = .unknown("?") }
            if lacking & 1 << Member.action.rawValue != 0 { action = .unknown("?") }
        }
        return true
    }

    /// The members whose placeholder is not what a record without them reads as.
    static let placeheld: UInt32 = 1 << Member.source.rawValue | 1 << Member.exit.rawValue
        | 1 << Member.attribute.rawValue | 1 << Member.action.rawValue
}

/// Member names of a list of fault records, wherever one is written (`MEMORY_FAULT`, `query-memory-faults`, snapshots).
enum FaultsKey {
    static let records = "records", dropped = "dropped"
}

extension FaultBatch {
    /// The names of a `MEMORY_FAULT` event's members that hold its batch, for readers outside the schema (the
    /// benchmarks' `JSONDecoder` baseline).
    public static let wireNames = (data: Event.Key.data, records: FaultsKey.records)
}

/// The payload of one `MEMORY_FAULT` event: its records (those with a `seq` and a `gpa`) and the count the
/// server says it dropped for this client.
public struct FaultBatch: Sendable, Equatable {
    public var records: [FaultRecord]
    public var dropped: UInt64

    public init(records: [FaultRecord] = [], dropped: UInt64 = 0) {
        self.records = records
        self.dropped = dropped
    }

    /// From a parsed event's `data`.
    public init(data: JSON?) { self.init(reading: data) }

    init<R: JSONReading>(reading data: R?) {
        if let list = data?[FaultsKey.records], let count = list.elementCount {
            // Each record is read where it will stay (no copy of it on the way in).
            records = Array(unsafeUninitializedCapacity: count) { buffer, initialized in
                list.forEachElement { e in
                    let slot = buffer.baseAddress! + initialized
                    slot.initialize(to: FaultRecord(placeholders: ()))
                    if slot.pointee.read(e) { initialized += 1 } else { slot.deinitialize(count: 1) }
                }
            }
        } else {
            records = []
        }
        dropped = data?[FaultsKey.dropped]?.uint64Value ?? 0
    }

    /// The batch of a `MEMORY_FAULT` event message, read in place; nil when the document is another message.
    public init?(event d: JSONDocument) {
        guard let b = d.withRoot({ r -> FaultBatch? in
            guard r[Event.Key.event]?.open(Event.names) == .known(.memoryFault) else { return nil }
            return FaultBatch(reading: r[Event.Key.data])
        }) else { return nil }
        self = b
    }

    /// The event's `data`, as the server writes it.
    public var data: JSON { .object([(FaultsKey.records, .array(records.map(\.json))), (FaultsKey.dropped, .u(dropped))]) }
}
