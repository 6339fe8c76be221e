/// A JSON value as the control protocol carries it: integers stay exact 64-bit values (addresses and sizes are
/// unsigned 64-bit), objects keep their member order (replies read as the spec lists them).
public enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    /// An integer that fits in Int64 (negative ones always do).
    case int(Int64)
    /// A non-negative integer above Int64.max.
    case uint(UInt64)
    /// A number that is not an exact 64-bit integer (`1.5`, `1e5`, `18446744073709551616`), kept as its text:
    /// a peer's id is echoed exactly as it came, and nothing is lost by a conversion nobody asked for.
    case number(String)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.int(let x), .int(let y)): x == y
        case (.uint(let x), .uint(let y)): x == y
        case (.number(let x), .number(let y)): x == y
        case (.string(let x), .string(let y)): x == y
        case (.array(let x), .array(let y)): x == y
        case (.object(let x), .object(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: false
        }
    }

    // MARK: Building

    public static func u(_ v: UInt64) -> JSON { v <= UInt64(Int64.max) ? .int(Int64(v)) : .uint(v) }
    public static func i(_ v: Int) -> JSON { .int(Int64(v)) }
    public static func opt(_ v: JSON?) -> JSON { v ?? .null }

    // MARK: Reading

    /// A member by name: internal to Schema, so that every member name of the protocol (and of QEMU's QMP, the
    /// recording and snapshot files) is read here and nowhere else. Other modules read through the schema's types;
    /// tests, with `@testable import Schema`, read replies as a client would.
    subscript(key: String) -> JSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.0 == key }?.1
    }

    public var objectMembers: [(String, JSON)]? { if case .object(let m) = self { m } else { nil } }
    public var arrayValue: [JSON]? { if case .array(let a) = self { a } else { nil } }
    public var stringValue: String? { if case .string(let s) = self { s } else { nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { b } else { nil } }
    public var isNull: Bool { if case .null = self { true } else { false } }

    /// The value as an unsigned 64-bit integer, when it is a non-negative integer.
    public var uint64Value: UInt64? {
        switch self {
        case .int(let v): v >= 0 ? UInt64(v) : nil
        case .uint(let v): v
        default: nil
        }
    }

    public var intValue: Int? {
        switch self {
        case .int(let v): Int(exactly: v)
        default: nil
        }
    }

    public var doubleValue: Double? {
        switch self {
        case .int(let v): Double(v)
        case .uint(let v): Double(v)
        case .number(let t): Double(t)
        default: nil
        }
    }

    /// A short name of the value's type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .int, .uint, .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}

// MARK: Serialising

extension JSON {
    /// Compact JSON text on one line (what the wire carries).
    public var serialized: String {
        let o = JSONOutput(capacity: 64)
        o.write(self)
        return String(decoding: o.bytes, as: UTF8.self)
    }

    /// Indented JSON for people (snapshots pasted into tickets): objects and arrays one member a line, except
    /// those whose compact form fits in `inline` characters, which stay on one line (a fault record, a run).
    public func pretty(inline: Int = 100) -> String {
        var out: [UInt8] = []
        writePretty(to: &out, indent: 0, inline: inline)
        return String(decoding: out, as: UTF8.self)
    }

    private func writePretty(to out: inout [UInt8], indent: Int, inline: Int) {
        let compact = serialized
        let members: [(String?, JSON)]
        let open: UInt8, close: UInt8
        switch self {
        case .array(let a) where !a.isEmpty: members = a.map { (nil, $0) }; open = UInt8(ascii: "["); close = UInt8(ascii: "]")
        case .object(let m) where !m.isEmpty: members = m.map { ($0.0, $0.1) }; open = UInt8(ascii: "{"); close = UInt8(ascii: "}")
        default: out.append(contentsOf: compact.utf8); return
        }
        if compact.utf8.count + indent <= inline { out.append(contentsOf: compact.utf8); return }
        out.append(open)
        for (i, (k, v)) in members.enumerated() {
            out.append(contentsOf: (i == 0 ? "\n" : ",\n").utf8)
            out.append(contentsOf: repeatElement(0x20, count: indent + 2))
            if let k {
                out.append(contentsOf: JSON.string(k).serialized.utf8)
                out.append(contentsOf: ": ".utf8)
            }
            v.writePretty(to: &out, indent: indent + 2, inline: inline)
        }
        out.append(0x0A)
        out.append(contentsOf: repeatElement(0x20, count: indent))
        out.append(close)
    }

    /// Compact JSON text appended to `out`.
    public func write(to out: inout [UInt8]) {
        let o = JSONOutput(capacity: 256)
        o.write(self)
        out.append(contentsOf: o.bytes)
    }
}

/// A member's name as a record hands it to a writer (`JSONObjectRecord.forEachMember`): a literal of the code (copied
/// as it is where it holds nothing JSON escapes, as the code's names do), or any string, escaped as a value is.
public struct JSONName: ExpressibleByStringLiteral, Sendable {
    enum Storage: Sendable { case literal(StaticString), string(String) }
    let storage: Storage

    public init(stringLiteral value: StaticString) {
        // A one-character literal may come as a scalar, without the bytes `member` copies.
        storage = value.hasPointerRepresentation ? .literal(value) : .string(value.description)
    }

    public init(_ name: String) { storage = .string(name) }

    public var string: String {
        switch storage {
        case .literal(let s): s.description
        case .string(let s): s
        }
    }
}

/// JSON text written through a pointer into memory it owns: the room a piece needs is made with one comparison, then
/// its bytes are stored. Every compact writer goes through here (`JSON.write`, `serialized`, `vmscope trace --json`'s
/// events and records). Appending each piece to an `[UInt8]` instead cost a capacity and uniqueness check, and often a
/// call, for every name, value and punctuation mark: 4,800 instructions to write a traced event of 98 bytes
/// (callgrind, `trace-json-instr-per-event`).
public final class JSONOutput {
    // Unchecked: one writer at a time uses an output (it is not Sendable); the run-time exclusivity checks of a class's
    // members were half of the instructions of a write.
    @exclusivity(unchecked) private var base: UnsafeMutablePointer<UInt8>
    @exclusivity(unchecked) private var capacity: Int
    /// Bytes written.
    @exclusivity(unchecked) public private(set) var count = 0

    public init(capacity: Int = 4096) {
        self.capacity = max(capacity, 32)
        base = .allocate(capacity: self.capacity)
    }

    deinit {
        base.deallocate()
        plainLiterals?.deallocate()
    }

    /// What was written; valid until the next write or `removeAll`.
    public var bytes: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base, count: count) }

    /// Forgets what was written, keeping the memory.
    public func removeAll() { count = 0 }

    @inline(__always) private func room(_ n: Int) {
        if n > capacity &- count { grow(n) }
    }

    @inline(never) private func grow(_ n: Int) {
        let bigger = max(capacity * 2, count + n)
        let b = UnsafeMutablePointer<UInt8>.allocate(capacity: bigger)
        b.initialize(from: base, count: count)
        base.deallocate()
        base = b
        capacity = bigger
    }

    @inline(__always) public func append(_ byte: UInt8) {
        room(1)
        base[count] = byte
        count &+= 1
    }

    public func append(_ raw: UnsafeBufferPointer<UInt8>) {
        guard let from = raw.baseAddress, raw.count > 0 else { return }
        room(raw.count)
        (base + count).initialize(from: from, count: raw.count)
        count &+= raw.count
    }

    /// A value, compact.
    public func write(_ value: JSON) {
        switch value {
        case .null: literal("null")
        case .bool(let b): literal(b ? "true" : "false")
        case .int(let v):
            if v < 0 { append(UInt8(ascii: "-")) }
            writeDigits(v.magnitude)
        case .uint(let v): writeDigits(v)
        case .number(let t): var t = t; t.withUTF8 { append($0) }
        case .string(let s): writeString(s)
        case .array(let a):
            append(UInt8(ascii: "["))
            for (i, e) in a.enumerated() {
                if i > 0 { append(UInt8(ascii: ",")) }
                write(e)
            }
            append(UInt8(ascii: "]"))
        case .object(let m):
            append(UInt8(ascii: "{"))
            for (i, (k, v)) in m.enumerated() { member(k, v, first: i == 0) }
            append(UInt8(ascii: "}"))
        }
    }

    /// One member of an object being written (the `{` is out already, the `}` comes after the last): its comma
    /// unless it is the first, its name, its value. For writers that hand members over without making the object
    /// (`JSONObjectRecord.writeJSON`).
    public func member(_ name: String, _ value: JSON, first: Bool) { member(JSONName(name), value, first: first) }

    /// The same, named by a `JSONName`: a literal name is copied as it is.
    public func member(_ name: JSONName, _ value: JSON, first: Bool) {
        switch name.storage {
        case .literal(let s) where isPlain(s):
            let n = s.utf8CodeUnitCount
            room(n &+ 4)
            var o = base + count
            if !first { o.pointee = UInt8(ascii: ","); o += 1 }
            o.pointee = UInt8(ascii: "\"")
            (o + 1).initialize(from: s.utf8Start, count: n)
            o += n &+ 1
            o[0] = UInt8(ascii: "\"")
            o[1] = UInt8(ascii: ":")
            count = o + 2 - base
        case .literal(let s):
            if !first { append(UInt8(ascii: ",")) }
            writeString(utf8: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
            append(UInt8(ascii: ":"))
        case .string(let s):
            if !first { append(UInt8(ascii: ",")) }
            writeString(s)
            append(UInt8(ascii: ":"))
        }
        write(value)
    }

    /// Literal names found to hold nothing to escape, by address (a literal's bytes never move nor change): each is
    /// looked at once, not at every write. Slots: `plainSlots`, direct-mapped; made at the first literal name
    /// (`JSON.write` and `serialized`, which make an output for each value, never need them).
    @exclusivity(unchecked) private var plainLiterals: UnsafeMutablePointer<UInt>?
    private static let plainSlots = 64

    /// Whether the literal holds nothing JSON escapes.
    @inline(__always) private func isPlain(_ s: StaticString) -> Bool {
        let address = UInt(bitPattern: s.utf8Start)
        let slots = plainLiterals ?? makePlainLiterals()
        let slot = slots + Int(truncatingIfNeeded: (address >> 3) & UInt(Self.plainSlots - 1))
        if slot.pointee == address { return true }
        let plain = !UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount).contains {
            $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") || $0 < 0x20
        }
        if plain { slot.pointee = address }
        return plain
    }

    @inline(never) private func makePlainLiterals() -> UnsafeMutablePointer<UInt> {
        let slots = UnsafeMutablePointer<UInt>.allocate(capacity: Self.plainSlots)
        slots.initialize(repeating: 0, count: Self.plainSlots)
        plainLiterals = slots
        return slots
    }

    @inline(__always) private func literal(_ word: StaticString) {
        append(UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount))
    }

    /// The two digits of every number below 100, in order.
    private static let pairs: StaticString = "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"

    /// `v` in decimal: two digits at a time from the end of the room for the longest (20 digits), then moved down.
    func writeDigits(_ v: UInt64) {
        room(20)
        let end = base + count + 20
        var p = end
        var rest = v
        let pairs = Self.pairs.utf8Start
        while rest >= 100 {
            let q = rest / 100
            let r = Int(truncatingIfNeeded: rest &- q &* 100) &* 2
            p -= 2
            p[0] = pairs[r]
            p[1] = pairs[r &+ 1]
            rest = q
        }
        if rest >= 10 {
            let r = Int(truncatingIfNeeded: rest) &* 2
            p -= 2
            p[0] = pairs[r]
            p[1] = pairs[r &+ 1]
        } else {
            p -= 1
            p[0] = 0x30 &+ UInt8(truncatingIfNeeded: rest)
        }
        let n = end - p
        if p != base + count { (base + count).update(from: p, count: n) }
        count &+= n
    }

    /// A string, quoted, with what JSON requires escaped.
    public func writeString(_ s: String) {
        var s = s
        s.withUTF8 { writeString(utf8: $0) }
    }

    @inline(__always) func writeString(utf8 u: UnsafeBufferPointer<UInt8>) {
        // Room for the worst case (every byte a \\u00XX escape), so each byte below is stored without a check.
        room(u.count &* 6 &+ 2)
        var o = base + count
        o.pointee = UInt8(ascii: "\"")
        o += 1
        if let from = u.baseAddress {
            let raw = UnsafeRawPointer(from)
            let n = u.count
            var i = 0
            // Eight bytes at a time while none of them needs an escape, then a byte at a time.
            while i &+ 8 <= n {
                let w = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                guard !Self.needsEscape(w) else { break }
                UnsafeMutableRawPointer(o).storeBytes(of: w, as: UInt64.self)
                o += 8
                i &+= 8
            }
            while i < n {
                let b = from[i]
                i &+= 1
                if b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") && b >= 0x20 {
                    o.pointee = b
                    o += 1
                    continue
                }
                o[0] = 0x5C
                switch b {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): o[1] = b; o += 2
                case 0x0A: o[1] = UInt8(ascii: "n"); o += 2
                case 0x0D: o[1] = UInt8(ascii: "r"); o += 2
                case 0x09: o[1] = UInt8(ascii: "t"); o += 2
                default:
                    let hex = Self.hexDigits.utf8Start
                    o[1] = UInt8(ascii: "u"); o[2] = 0x30; o[3] = 0x30
                    o[4] = hex[Int(b >> 4)]; o[5] = hex[Int(b & 15)]
                    o += 6
                }
            }
        }
        o.pointee = UInt8(ascii: "\"")
        count = o + 1 - base
    }

    private static let hexDigits: StaticString = "0123456789abcdef"

    /// Whether any of the eight bytes in `w` is a quote, a backslash or a control byte.
    @inline(__always) static func needsEscape(_ w: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        let quote = w ^ (ones &* 0x22), slash = w ^ (ones &* 0x5C)
        let hits = ((quote &- ones) & ~quote) | ((slash &- ones) & ~slash) | ((w &- ones &* 0x20) & ~w)
        return hits & highs != 0
    }
}

// MARK: Parsing

/// Why a text is not one JSON value, and where (byte offset).
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var offset: Int
    public var reason: String
    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

extension JSON {
    /// Parses exactly one JSON value (surrounding whitespace allowed). Nesting is limited to 128 levels.
    public static func parse(_ text: String) throws(JSONParseError) -> JSON {
        var bytes = Array(text.utf8)
        return try parse(bytes: &bytes)
    }

    public static func parse(bytes: inout [UInt8]) throws(JSONParseError) -> JSON {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> JSON in
            try parse(buffer)
        }
    }

    public static func parse(_ buffer: UnsafeBufferPointer<UInt8>) throws(JSONParseError) -> JSON {
        try parse(buffer, maxValues: .max).value
    }

    /// Parses one value of at most `maxValues` values (each number, string, literal, array and object counts one):
    /// what a reader holds of its input is bounded by the values it takes, not only by its bytes (a line of
    /// 128 million zeros is 256 MiB of text and gigabytes as a tree). Returns the value and how many it used.
    public static func parse(bytes: inout [UInt8], maxValues: Int) throws(JSONParseError) -> (value: JSON, values: Int) {
        try bytes.withUnsafeBufferPointer { (buffer) throws(JSONParseError) -> (value: JSON, values: Int) in
            try parse(buffer, maxValues: maxValues)
        }
    }

    public static func parse(_ buffer: UnsafeBufferPointer<UInt8>, maxValues: Int) throws(JSONParseError) -> (value: JSON, values: Int) {
        let d = try JSONDocument(parsing: buffer, maxValues: maxValues)
        return (d.json, maxValues == .max ? 0 : d.values)
    }
}
