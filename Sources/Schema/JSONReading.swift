import Foundation

/// What the schema's decoders read: a tree (`JSON`) or a parsed document in place (`JSONDocument.Value`). A
/// decoder is written once against this and reads both the same way; the client's event path reads documents,
/// so a fault record's members are never built into a tree.
protocol JSONReading {
    /// A member by name (nil: not an object, or no such member).
    subscript(key: String) -> Self? { get }
    var uint64Value: UInt64? { get }
    var intValue: Int? { get }
    var boolValue: Bool? { get }
    var stringValue: String? { get }
    var isObject: Bool { get }
    /// An array's length (nil: not an array).
    var elementCount: Int? { get }
    /// Each element of an array, in order (nothing for other values).
    func forEachElement(_ body: (Self) -> Void)
    /// Each member of an object, its name as UTF-8, in order (nothing for other values).
    func forEachMember(_ body: (UnsafeBufferPointer<UInt8>, Self) -> Void)
    /// A string read as a value of `names`' enumeration; nil when not a string.
    func open<E>(_ names: WireNames<E>) -> Open<E>?
    /// The value as a tree (kept as it came: `Event.other`'s data).
    var json: JSON { get }
}

extension JSONReading {
    /// A string read as a schema value, through its enumeration's own `init(rawValue:)` (for values read
    /// seldom; the hot ones have a `WireNames` table).
    func schemaValue<E: SchemaEnum>(_: E.Type = E.self) -> Open<E>? { stringValue.map { Open<E>($0) } }
}

/// An enumeration's wire texts as bytes, made from its cases (so spelled nowhere else): read without making
/// a string.
struct WireNames<E: SchemaEnum>: Sendable {
    /// Each value's text with its `ShortKey`, which decides alone for texts of at most 16 bytes.
    let entries: [(key: ShortKey, bytes: [UInt8], value: E)]

    init() {
        entries = E.allCases.map { e in
            let bytes = Array(e.rawValue.utf8)
            return (bytes.withUnsafeBufferPointer { ShortKey($0) }, bytes, e)
        }
    }

    @inline(__always) func find(_ text: UnsafeBufferPointer<UInt8>) -> E? {
        let k = ShortKey(text)
        for e in entries where e.key == k {
            if text.count <= 16 || e.bytes.elementsEqual(text) { return e.value }
        }
        return nil
    }

    @inline(__always) func open(_ text: UnsafeBufferPointer<UInt8>) -> Open<E> {
        find(text).map { .known($0) } ?? .unknown(String(decoding: text, as: UTF8.self))
    }
}

/// A text as its length and two words read inside it (overlapping where it is short, its first and last eight
/// bytes where it is long): two texts of at most 16 bytes are equal when their keys are.
struct ShortKey: Equatable, Sendable {
    let count: Int, a: UInt64, b: UInt64

    @inline(__always) init(_ t: UnsafeBufferPointer<UInt8>) {
        count = t.count
        let x = UnsafeRawPointer(t.baseAddress ?? UnsafePointer(bitPattern: 1)!)
        switch t.count {
        case 0: a = 0; b = 0
        case 1...3: a = UInt64(t[0]) | UInt64(t[t.count >> 1]) << 8 | UInt64(t[t.count - 1]) << 16; b = 0
        case 4...8:
            a = UInt64(x.loadUnaligned(as: UInt32.self)); b = UInt64(x.loadUnaligned(fromByteOffset: t.count - 4, as: UInt32.self))
        default:
            a = x.loadUnaligned(as: UInt64.self); b = x.loadUnaligned(fromByteOffset: t.count - 8, as: UInt64.self)
        }
    }
}

extension JSON: JSONReading {
    var json: JSON { self }
    var isObject: Bool { if case .object = self { true } else { false } }
    var elementCount: Int? { arrayValue?.count }

    func forEachElement(_ body: (JSON) -> Void) {
        guard case .array(let a) = self else { return }
        for e in a { body(e) }
    }

    func forEachMember(_ body: (UnsafeBufferPointer<UInt8>, JSON) -> Void) {
        guard case .object(let members) = self else { return }
        for (k, v) in members {
            var k = k
            k.withUTF8 { body($0, v) }
        }
    }

    func open<E>(_ names: WireNames<E>) -> Open<E>? {
        guard case .string(var s) = self else { return nil }
        return s.withUTF8 { names.find($0) }.map { .known($0) } ?? .unknown(s)
    }
}

extension JSONDocument.Value: JSONReading {
    subscript(key: String) -> JSONDocument.Value? {
        let n = node
        guard n.kind == JSONDocument.Node.object else { return nil }
        var key = key
        return key.withUTF8 { want -> JSONDocument.Value? in
            var k = index + 1
            let end = Int(truncatingIfNeeded: n.b)
            while k < end {
                let name = at(k), v = at(k + 1)
                if name.equals(want) { return v }
                k = v.next
            }
            return nil
        }
    }

    /// Whether this string's value is `bytes`.
    @inline(__always) func equals(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        if let t = plainText {
            return t.count == bytes.count && (t.count == 0 || memcmp(t.baseAddress!, bytes.baseAddress!, t.count) == 0)
        }
        return withUTF8 { $0.elementsEqual(bytes) } ?? false
    }

    var uint64Value: UInt64? {
        let n = node
        switch n.kind {
        case JSONDocument.Node.int: return Int64(bitPattern: n.b) >= 0 ? n.b : nil
        case JSONDocument.Node.uint: return n.b
        default: return nil
        }
    }

    var intValue: Int? {
        let n = node
        return n.kind == JSONDocument.Node.int ? Int(exactly: Int64(bitPattern: n.b)) : nil
    }

    var boolValue: Bool? {
        switch node.kind {
        case JSONDocument.Node.trueValue: true
        case JSONDocument.Node.falseValue: false
        default: nil
        }
    }

    var stringValue: String? { withUTF8 { String(decoding: $0, as: UTF8.self) } }
    var isObject: Bool { node.kind == JSONDocument.Node.object }
    var isNull: Bool { node.kind == JSONDocument.Node.null }

    var elementCount: Int? {
        let n = node
        return n.kind == JSONDocument.Node.array ? n.length : nil
    }

    func forEachElement(_ body: (JSONDocument.Value) -> Void) {
        let n = node
        guard n.kind == JSONDocument.Node.array else { return }
        var k = index + 1
        let end = Int(truncatingIfNeeded: n.b)
        while k < end {
            let e = at(k)
            body(e)
            k = e.next
        }
    }

    func forEachMember(_ body: (UnsafeBufferPointer<UInt8>, JSONDocument.Value) -> Void) {
        let n = node
        guard n.kind == JSONDocument.Node.object else { return }
        var k = index + 1
        let end = Int(truncatingIfNeeded: n.b)
        while k < end {
            let name = at(k), v = at(k + 1)
            if let t = name.plainText { body(t, v) } else { _ = name.withUTF8 { body($0, v) } }
            k = v.next
        }
    }

    func open<E>(_ names: WireNames<E>) -> Open<E>? {
        if let t = plainText { return names.open(t) }
        return withUTF8 { names.open($0) }
    }
}

/// Whether `n` bytes at `a` and at `b` are the same: a few loads, each inside both (names and the protocol's
/// words are short; longer runs go to `memcmp`).
@inline(__always) func sameBytes(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    let x = UnsafeRawPointer(a), y = UnsafeRawPointer(b)
    switch n {
    case 0: return true
    case 1...3:
        return a[0] == b[0] && a[n - 1] == b[n - 1] && a[n >> 1] == b[n >> 1]
    case 4...8:
        return x.loadUnaligned(as: UInt32.self) == y.loadUnaligned(as: UInt32.self)
            && x.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self) == y.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self)
    case 9...16:
        return x.loadUnaligned(as: UInt64.self) == y.loadUnaligned(as: UInt64.self)
            && x.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self) == y.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self)
    default:
        return memcmp(a, b, n) == 0
    }
}
