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
        seq = 0; gpa = 0; timeNs = 0; vcpu = nil; size = 0; flags = 0; isPrivate = false; access = .known(.unknown)
        errno = nil; source = .unknown("?"); exit = .unknown("?"); attribute = .unknown("?"); slot = nil; action = .unknown("?")
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
            return memcmp(m.key.utf8Start, bytes.baseAddress!, bytes.count) == 0 ? m : nil
        }
    }

    static let required: UInt32 = 1 << Member.seq.rawValue | 1 << Member.gpa.rawValue

    /// Sets one member from its JSON value (a value of the wrong type reads as absent).
    mutating func set(_ m: Member, _ v: JSON) -> Bool {
        switch m {
        case .seq: if let x = v.uint64Value { seq = x } else { return false }
        case .timeNs: timeNs = v.uint64Value ?? 0
        case .vcpu: vcpu = v.intValue
        case .gpa: if let x = v.uint64Value { gpa = x } else { return false }
        case .size: size = v.uint64Value ?? 0
        case .flags: flags = v.uint64Value ?? 0
        case .isPrivate: isPrivate = v.boolValue ?? false
        case .access: access = v.open() ?? .known(.unknown)
        case .errno: errno = v.stringValue
        case .source: source = v.open() ?? .unknown("?")
        case .exit: exit = v.open() ?? .unknown("?")
        case .attribute: attribute = v.open() ?? .unknown("?")
        case .slot: slot = v.intValue
        case .action: action = v.open() ?? .unknown("?")
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
    public init?(_ j: JSON) {
        guard case .object(let members) = j else { return nil }
        self.init(empty: ())
        var have: UInt32 = 0
        for (k, v) in members {
            guard let m = Array(k.utf8).withUnsafeBufferPointer({ Member.named($0) }) else { continue }
            if set(m, v) { have |= 1 << m.rawValue }
        }
        guard have & Self.required == Self.required else { return nil }
    }
}

/// Member names of a list of fault records, wherever one is written; the fast decoder below matches the same words (`MEMORY_FAULT`, `query-memory-faults`, snapshots).
enum FaultsKey {
    static let records = "records", dropped = "dropped"
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

    /// From a parsed event's `data` (the general path).
    public init(data: JSON?) {
        records = (data?[FaultsKey.records]?.arrayValue ?? []).compactMap(FaultRecord.init)
        dropped = data?[FaultsKey.dropped]?.uint64Value ?? 0
    }

    /// How a `MEMORY_FAULT` event written compactly starts (the framer's cue to try the fast decoder).
    public static let compactEventPrefix = Array(#"{"event":"MEMORY_FAULT""#.utf8)

    /// The event's `data`, as the server writes it.
    public var data: JSON { .object([(FaultsKey.records, .array(records.map(\.json))), (FaultsKey.dropped, .u(dropped))]) }

    /// Decodes one whole message straight from its bytes when it is a `MEMORY_FAULT` event, without building a
    /// JSON tree (the inspector's hot path: up to a thousand records a line, a line every 10 ms).
    ///
    /// Returns nil when the message is anything else, including text that is not valid JSON or an object with a
    /// repeated member: the caller then parses it with `JSON.parse`, which says what is wrong. For every message
    /// it accepts, the result equals `FaultBatch(data: parsed["data"])` (the tests check this on mutated input).
    public static func decodeEvent(_ buffer: UnsafeBufferPointer<UInt8>) -> FaultBatch? {
        var d = FaultDecoder(p: JSONParser(buffer))
        return d.event()
    }

    public static func decodeEvent(_ bytes: [UInt8]) -> FaultBatch? {
        bytes.withUnsafeBufferPointer { decodeEvent($0) }
    }
}

/// The streaming decoder behind `FaultBatch.decodeEvent`; any surprise returns nil (never a guess).
///
/// Fast where the VMM's own output goes (members in the spec's order, plain numbers, the strings it writes):
/// each member name is first compared with the one expected next, values of the expected type are read in
/// place, and the known strings are shared, not built. Anything else goes through `JSONParser` and
/// `FaultRecord.set`, the same reading as the general path.
struct FaultDecoder {
    var p: JSONParser
    private let b: UnsafeBufferPointer<UInt8>

    init(p: JSONParser) {
        self.p = p
        self.b = p.b
    }

    @inline(__always) private func at(_ k: Int) -> UInt8 { k < b.count ? b[k] : 0 }

    @inline(__always) private mutating func skipWhitespace() {
        while p.i < b.count {
            let c = b[p.i]
            guard c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 else { return }
            p.i += 1
        }
    }

    @inline(__always) private mutating func byte(_ c: UInt8) -> Bool {
        skipWhitespace()
        guard at(p.i) == c else { return false }
        p.i += 1
        return true
    }

    /// Whether the bytes at `k` are `pattern` (no bytes read). Patterns of 4 to 16 bytes (every member name and
    /// word the VMM writes) are compared as two overlapping words, not byte by byte.
    @inline(__always) private func matches(_ pattern: StaticString, at k: Int) -> Bool {
        let n = pattern.utf8CodeUnitCount
        guard k + n <= b.count else { return false }
        let s = UnsafeRawPointer(pattern.utf8Start), t = UnsafeRawPointer(b.baseAddress! + k)
        switch n {
        case 8...16:
            return s.loadUnaligned(as: UInt64.self) == t.loadUnaligned(as: UInt64.self)
                && s.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self) == t.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self)
        case 4..<8:
            return s.loadUnaligned(as: UInt32.self) == t.loadUnaligned(as: UInt32.self)
                && s.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self) == t.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self)
        default:
            for j in 0..<n where s.load(fromByteOffset: j, as: UInt8.self) != t.load(fromByteOffset: j, as: UInt8.self) {
                return false
            }
            return true
        }
    }

    /// The bytes of a member name without escapes, and the colon after it (names with escapes send the message to
    /// the general path).
    private mutating func name() -> UnsafeBufferPointer<UInt8>? {
        skipWhitespace()
        guard at(p.i) == UInt8(ascii: "\"") else { return nil }
        let start = p.i + 1
        var k = start
        while k < b.count {
            let c = b[k]
            if c == UInt8(ascii: "\"") { break }
            if c == UInt8(ascii: "\\") || c < 0x20 { return nil }
            k += 1
        }
        guard k < b.count else { return nil }
        p.i = k + 1
        guard byte(UInt8(ascii: ":")) else { return nil }
        skipWhitespace()
        return UnsafeBufferPointer(rebasing: b[start..<k])
    }

    private static func equal(_ s: UnsafeBufferPointer<UInt8>, _ k: StaticString) -> Bool {
        k.utf8CodeUnitCount == s.count && memcmp(k.utf8Start, s.baseAddress!, s.count) == 0
    }

    /// Any value, through the general parser (members the fast path does not read).
    private mutating func anyValue(depth: Int) -> JSON? {
        try? p.value(depth: depth)
    }

    /// After a member: true at the end of the object, false before the next member, nil on anything else.
    @inline(__always) private mutating func endOfObject() -> Bool? {
        skipWhitespace()
        let c = at(p.i)
        if c == UInt8(ascii: ",") { p.i += 1; return false }
        if c == UInt8(ascii: "}") { p.i += 1; return true }
        return nil
    }

    mutating func event() -> FaultBatch? {
        guard byte(UInt8(ascii: "{")) else { return nil }
        // The VMM and QEMU write "event" first; a message that does not is left to the general path.
        guard let first = name(), Self.equal(first, "event"), matches("\"MEMORY_FAULT\"", at: p.i) else { return nil }
        p.i += 14
        var seenData = false
        var batch = FaultBatch()
        var others: [String] = []
        while true {
            guard let end = endOfObject() else { return nil }
            if end { break }
            guard let key = name() else { return nil }
            if Self.equal(key, "data") {
                guard !seenData else { return nil }
                seenData = true
                guard at(p.i) == UInt8(ascii: "{"), let data = dataObject() else { return nil }
                batch = data
            } else {
                guard !Self.equal(key, "event"), let k = String(validating: key, as: UTF8.self), !others.contains(k),
                      anyValue(depth: 1) != nil else { return nil }
                others.append(k)
            }
        }
        skipWhitespace()
        guard p.i == b.count else { return nil }
        return batch
    }

    private mutating func dataObject() -> FaultBatch? {
        p.i += 1
        var batch = FaultBatch()
        var seenRecords = false, seenDropped = false
        var others: [String] = []
        if byte(UInt8(ascii: "}")) { return batch }
        while true {
            guard let key = name() else { return nil }
            if Self.equal(key, "records") {
                guard !seenRecords else { return nil }
                seenRecords = true
                if at(p.i) == UInt8(ascii: "[") {
                    guard records(into: &batch.records) else { return nil }
                } else {
                    guard anyValue(depth: 2) != nil else { return nil }
                }
            } else if Self.equal(key, "dropped") {
                guard !seenDropped, let v = anyValue(depth: 2) else { return nil }
                seenDropped = true
                batch.dropped = v.uint64Value ?? 0
            } else {
                guard let k = String(validating: key, as: UTF8.self), !others.contains(k), anyValue(depth: 2) != nil else {
                    return nil
                }
                others.append(k)
            }
            guard let end = endOfObject() else { return nil }
            if end { return batch }
        }
    }

    private mutating func records(into out: inout [FaultRecord]) -> Bool {
        p.i += 1
        // The VMM's records are ~200 bytes each; reserving for what the rest of the line can hold saves the
        // array's regrowth (bounded, so a long line of something else reserves little).
        out.reserveCapacity(min((b.count - p.i) / 192, 4096))
        if byte(UInt8(ascii: "]")) { return true }
        while true {
            skipWhitespace()
            if at(p.i) == UInt8(ascii: "{") {
                guard record(into: &out) else { return false }
            } else {
                guard anyValue(depth: 3) != nil else { return false }
            }
            skipWhitespace()
            let c = at(p.i)
            p.i += 1
            if c == UInt8(ascii: ",") { continue }
            return c == UInt8(ascii: "]")
        }
    }

    /// A plain non-negative integer (digits only, no leading zero, at most 18 digits), else nil with nothing read.
    @inline(__always) private mutating func plainUnsigned() -> UInt64? {
        var k = p.i
        var v: UInt64 = 0
        while k < b.count {
            let d = b[k] &- 0x30
            guard d < 10 else { break }
            v = v &* 10 &+ UInt64(d)
            k += 1
        }
        let n = k - p.i
        guard n > 0, n <= 18, k < b.count, !(n > 1 && b[p.i] == 0x30) else { return nil }
        switch b[k] {
        case UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x0A, 0x0D, 0x09: break
        default: return nil
        }
        p.i = k
        return v
    }

    /// The values of one enumeration as they appear quoted in the VMM's output, from the enumeration itself.
    struct Values<E: SchemaEnum> {
        let entries: [(bytes: [UInt8], value: Open<E>)]
        init() { entries = E.allCases.map { (Array("\"\($0.rawValue)\"".utf8), .known($0)) } }
    }
    static let access = Values<FaultAccess>(), source = Values<FaultSource>(), exit = Values<FaultExit>()
    static let attribute = Values<PageAttribute>(), action = Values<FaultAction>()
    /// The errno names the kernel's memory-fault exits carry (shared strings, not built per record).
    static let errnoNames: [(bytes: [UInt8], value: String)] = ["EFAULT", "EHWPOISON"].map { (Array("\"\($0)\"".utf8), $0) }

    /// A quoted value of `table` at `p.i`, consumed; nil with nothing read (another value goes the general way).
    @inline(__always) private mutating func known<E>(_ table: Values<E>) -> Open<E>? { match(table.entries) }

    @inline(__always) private mutating func knownErrno() -> String? { match(Self.errnoNames) }

    /// The value of the first entry whose bytes are at `p.i`, consumed; nil with nothing read.
    @inline(__always) private mutating func match<T>(_ entries: [(bytes: [UInt8], value: T)]) -> T? {
        guard at(p.i) == UInt8(ascii: "\"") else { return nil }
        for e in entries {
            let n = e.bytes.count
            guard p.i + n <= b.count, e.bytes.withUnsafeBufferPointer({ memcmp($0.baseAddress!, b.baseAddress! + p.i, n) }) == 0 else { continue }
            p.i += n
            return e.value
        }
        return nil
    }

    /// The member at `p.i` if it is `m` (its name, quotes and colon, no whitespace), consumed.
    @inline(__always) private mutating func expect(_ m: FaultRecord.Member) -> Bool {
        let pattern: StaticString
        switch m {
        case .seq: pattern = "\"seq\":"
        case .timeNs: pattern = "\"time-ns\":"
        case .vcpu: pattern = "\"vcpu\":"
        case .gpa: pattern = "\"gpa\":"
        case .size: pattern = "\"size\":"
        case .flags: pattern = "\"flags\":"
        case .isPrivate: pattern = "\"private\":"
        case .access: pattern = "\"access\":"
        case .errno: pattern = "\"errno\":"
        case .source: pattern = "\"source\":"
        case .exit: pattern = "\"exit\":"
        case .attribute: pattern = "\"attribute\":"
        case .slot: pattern = "\"slot\":"
        case .action: pattern = "\"action\":"
        }
        guard matches(pattern, at: p.i) else { return false }
        p.i += pattern.utf8CodeUnitCount
        return true
    }

    /// Reads the value of member `m` straight into `r` when it has the type the VMM writes; false when it has
    /// another (nothing read then).
    @inline(__always) private mutating func fastValue(_ m: FaultRecord.Member, into r: inout FaultRecord) -> Bool {
        switch m {
        case .seq, .timeNs, .gpa, .size, .flags:
            guard let v = plainUnsigned() else { return false }
            switch m {
            case .seq: r.seq = v
            case .timeNs: r.timeNs = v
            case .gpa: r.gpa = v
            case .size: r.size = v
            default: r.flags = v
            }
        case .vcpu, .slot:
            let v: Int?
            if let n = plainUnsigned() { v = Int(n) } else if matches("null", at: p.i) { p.i += 4; v = nil } else { return false }
            if m == .vcpu { r.vcpu = v } else { r.slot = v }
        case .isPrivate:
            if matches("true", at: p.i) { p.i += 4; r.isPrivate = true }
            else if matches("false", at: p.i) { p.i += 5; r.isPrivate = false }
            else { return false }
        case .errno:
            if matches("null", at: p.i) { p.i += 4; r.errno = nil }
            else if let s = knownErrno() { r.errno = s }
            else { return false }
        case .access: guard let v = known(Self.access) else { return false }; r.access = v
        case .source: guard let v = known(Self.source) else { return false }; r.source = v
        case .exit: guard let v = known(Self.exit) else { return false }; r.exit = v
        case .attribute: guard let v = known(Self.attribute) else { return false }; r.attribute = v
        case .action: guard let v = known(Self.action) else { return false }; r.action = v
        }
        return true
    }

    /// Appends the record at `p.i` to `out` (a record without `seq` or `gpa` is skipped, as the general path
    /// does); false gives up on the message.
    private mutating func record(into out: inout [FaultRecord]) -> Bool {
        p.i += 1
        var r = FaultRecord(empty: ())
        var seen: UInt32 = 0, have: UInt32 = 0
        var others: [String] = []
        var predicted = 0
        if byte(UInt8(ascii: "}")) { return true }
        while true {
            skipWhitespace()
            let m: FaultRecord.Member
            if let guess = FaultRecord.Member(rawValue: predicted), expect(guess) {
                m = guess
                skipWhitespace()
            } else {
                guard let key = name() else { return false }
                guard let named = FaultRecord.Member.named(key) else {
                    guard let k = String(validating: key, as: UTF8.self), !others.contains(k), anyValue(depth: 4) != nil else {
                        return false
                    }
                    others.append(k)
                    guard let end = endOfObject() else { return false }
                    if end { break }
                    continue
                }
                m = named
            }
            predicted = m.rawValue + 1
            let bit: UInt32 = 1 << m.rawValue
            guard seen & bit == 0 else { return false }
            seen |= bit
            if fastValue(m, into: &r) {
                have |= bit
            } else {
                guard let v = anyValue(depth: 4) else { return false }
                if r.set(m, v) { have |= bit }
            }
            guard let end = endOfObject() else { return false }
            if end { break }
        }
        if have & FaultRecord.required == FaultRecord.required { out.append(consume r) }
        return true
    }
}
