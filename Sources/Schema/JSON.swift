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
        case .bool(let b):
            let word: StaticString = b ? "true" : "false"
            out.append(contentsOf: UnsafeBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount))
        case .int(let v):
            if v < 0 { out.append(UInt8(ascii: "-")) }
            JSON.writeDigits(v.magnitude, to: &out)
        case .uint(let v): JSON.writeDigits(v, to: &out)
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
            for (i, (k, v)) in m.enumerated() { JSON.writeMember(k, v, first: i == 0, to: &out) }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// One member of an object being written (the `{` is out already, the `}` comes after the last): its comma
    /// unless it is the first, its name, its value. For writers that hand members over without making the object
    /// (`TraceEvent.writeJSON`).
    public static func writeMember(_ name: String, _ value: JSON, first: Bool, to out: inout [UInt8]) {
        if !first { out.append(UInt8(ascii: ",")) }
        writeString(name, to: &out)
        out.append(UInt8(ascii: ":"))
        value.write(to: &out)
    }

    /// `v` in decimal, straight into `out` (through `String(v)` it was a formatted string made and copied for each).
    @inline(__always) static func writeDigits(_ v: UInt64, to out: inout [UInt8]) {
        guard v >= 10 else { out.append(0x30 &+ UInt8(truncatingIfNeeded: v)); return }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)   // 24 bytes: room for the 20 digits of UInt64.max
        var n = 0
        var rest = v
        withUnsafeMutableBytes(of: &digits) { d in
            while rest > 0 {
                n += 1
                d[24 - n] = 0x30 &+ UInt8(truncatingIfNeeded: rest % 10)
                rest /= 10
            }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: d[(24 - n)...]))
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
        let d = try JSONDocument(parsing: buffer, maxValues: maxValues)
        return (d.json, maxValues == .max ? 0 : d.values)
    }
}
