import Foundation

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
