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
        var out: [UInt8] = []
        out.reserveCapacity(64)
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
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
                JSON.writeString(k, to: &out)
                out.append(contentsOf: ": ".utf8)
            }
            v.writePretty(to: &out, indent: indent + 2, inline: inline)
        }
        out.append(0x0A)
        out.append(contentsOf: repeatElement(0x20, count: indent))
        out.append(close)
    }

    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        case .bool(let b): out.append(contentsOf: b ? Array("true".utf8) : Array("false".utf8))
        case .int(let v): out.append(contentsOf: String(v).utf8)
        case .uint(let v): out.append(contentsOf: String(v).utf8)
        case .number(let t): out.append(contentsOf: t.utf8)
        case .string(let s): JSON.writeString(s, to: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, e) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                e.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let m):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in m.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSON.writeString(k, to: &out)
                out.append(UInt8(ascii: ":"))
                v.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { u in
            // Runs that need no escape go in whole (found eight bytes at a time); only the bytes that do are looked at
            // one by one.
            var i = 0, run = 0
            while i < u.count {
                if i + 8 <= u.count, !Self.needsEscape(UnsafeRawPointer(u.baseAddress! + i).loadUnaligned(as: UInt64.self)) {
                    i += 8
                    continue
                }
                let b = u[i]
                guard b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b < 0x20 else { i += 1; continue }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: u[run..<i]))
                switch b {
                case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
                case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
                case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
                case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
                case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
                default:
                    let hex: [UInt8] = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)]])
                }
                i += 1
                run = i
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: u[run..<u.count]))
        }
        out.append(UInt8(ascii: "\""))
    }

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
        var p = JSONParser(buffer)
        p.budget = maxValues
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        guard p.i == buffer.count else { throw p.fail("unexpected text after the value") }
        return (v, maxValues == .max ? 0 : maxValues - p.budget)
    }
}

struct JSONParser {
    let b: UnsafeBufferPointer<UInt8>
    var i = 0
    /// Values this parse may still make.
    var budget = Int.max

    init(_ b: UnsafeBufferPointer<UInt8>) { self.b = b }

    func fail(_ reason: String) -> JSONParseError { JSONParseError(offset: i, reason: reason) }

    mutating func skipWhitespace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    mutating func literal(_ word: StaticString, _ v: JSON) throws(JSONParseError) -> JSON {
        let n = word.utf8CodeUnitCount
        guard i + n <= b.count else { throw fail("unexpected end") }
        for k in 0..<n where b[i + k] != word.utf8Start[k] { throw fail("unexpected character") }
        i += n
        return v
    }

    mutating func value(depth: Int) throws(JSONParseError) -> JSON {
        guard depth < 128 else { throw fail("nested deeper than 128 levels") }
        guard budget > 0 else { throw fail("more values than this reader takes") }
        if budget != .max { budget -= 1 }
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"):
            i += 1
            var members: [(String, JSON)] = []
            /// The names so far, once there are more than a linear search is worth (linear in all: an object
            /// with thousands of members used to cost a Set of all of them at each member).
            var names: Set<String> = []
            skipWhitespace()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
                let key = try string()
                skipWhitespace()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                skipWhitespace()
                let v = try value(depth: depth + 1)
                members.append((key, v))
                if members.count > 1 && members.count <= 32 {
                    for k in 0..<(members.count - 1) where members[k].0 == key { throw fail("duplicate member \"\(key)\"") }
                } else if members.count > 32 {
                    if names.isEmpty { names = Set(members.dropLast().map(\.0)) }
                    guard names.insert(key).inserted else { throw fail("duplicate member \"\(key)\"") }
                }
                skipWhitespace()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(members) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            var elements: [JSON] = []
            skipWhitespace()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(elements) }
            while true {
                skipWhitespace()
                elements.append(try value(depth: depth + 1))
                skipWhitespace()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(elements) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("unexpected character")
        }
    }

    mutating func number() throws(JSONParseError) -> JSON {
        let start = i
        var negative = false
        if b[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        guard i < b.count, b[i] >= 0x30 && b[i] <= 0x39 else { throw fail("expected a digit") }
        if b[i] == 0x30, i + 1 < b.count, b[i + 1] >= 0x30 && b[i + 1] <= 0x39 { throw fail("leading zero") }
        var magnitude: UInt64 = 0
        var overflow = false
        while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 {
            let (m1, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (m2, o2) = m1.addingReportingOverflow(UInt64(b[i] - 0x30))
            overflow = overflow || o1 || o2
            magnitude = m2
            i += 1
        }
        var isFloat = false
        if i < b.count, b[i] == UInt8(ascii: ".") {
            isFloat = true
            i += 1
            guard i < b.count, b[i] >= 0x30 && b[i] <= 0x39 else { throw fail("expected a digit after '.'") }
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            isFloat = true
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < b.count, b[i] >= 0x30 && b[i] <= 0x39 else { throw fail("expected an exponent") }
            while i < b.count, b[i] >= 0x30 && b[i] <= 0x39 { i += 1 }
        }
        if !isFloat && !overflow {
            if !negative { return magnitude <= UInt64(Int64.max) ? .int(Int64(magnitude)) : .uint(magnitude) }
            if magnitude <= UInt64(Int64.max) { return .int(-Int64(magnitude)) }
            if magnitude == UInt64(Int64.max) + 1 { return .int(Int64.min) }
        }
        return .number(String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self))
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= b.count else { throw fail("unexpected end in \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("bad \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    mutating func string() throws(JSONParseError) -> String {
        i += 1  // opening quote
        let start = i
        // Fast path: no escapes. Eight bytes at a time while none of them is a quote, a backslash or a control
        // byte (a 1 MiB string costs a debug build 30 ms instead of 200; the server parses each message whole).
        if let base = b.baseAddress {
            while i + 8 <= b.count, !JSON.needsEscape(UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self)) { i += 8 }
        }
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                let s = String(validating: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
                guard let s else { throw JSONParseError(offset: start, reason: "invalid UTF-8 in a string") }
                i += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            if c < 0x20 { throw fail("control character in a string") }
            i += 1
        }
        var out = Array(UnsafeBufferPointer(rebasing: b[start..<i]))
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else {
                    throw JSONParseError(offset: start, reason: "invalid UTF-8 in a string")
                }
                return s
            }
            if c < 0x20 { throw fail("control character in a string") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("unexpected end in an escape") }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if scalar >= 0xD800 && scalar < 0xDC00 {
                    guard i + 2 <= b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate")
                    }
                    i += 2
                    let low = try hex4()
                    guard low >= 0xDC00 && low < 0xE000 else { throw fail("unpaired surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid code point") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw fail("bad escape")
            }
        }
        throw fail("unterminated string")
    }
}
