import Foundation

/// A JSON text parsed once into a flat list of nodes, read in place: the protocol's one parser.
///
/// `JSON.parse` builds its tree from a document; the client's event path reads events straight from one (a
/// fault record's members are looked at where they lie, strings are made only when asked for). Parsing checks
/// everything the tree's reader would refuse: syntax, UTF-8, escapes, repeated member names, nesting past 128
/// levels and a budget of values. What a document holds is bounded by its text: at most a node (16 bytes) for
/// every two bytes.
public struct JSONDocument: @unchecked Sendable {
    // @unchecked: `storage` is never mutated after the parse.

    /// One value. Strings and member names point into the text (`b` is the offset of their first byte after the
    /// quote, the upper half of `a` their length in the text); integers hold their value in `b`; arrays and
    /// objects hold their element or member count in `a`'s upper half and, in `b`, the index of the node after
    /// their last descendant. An object's members are a name node followed by the value's nodes.
    struct Node {
        var a: UInt64
        var b: UInt64

        static let null: UInt64 = 0, falseValue: UInt64 = 1, trueValue: UInt64 = 2, int: UInt64 = 3, uint: UInt64 = 4
        static let number: UInt64 = 5, string: UInt64 = 6, array: UInt64 = 7, object: UInt64 = 8
        /// Flag: the string has escapes (its text is not its value).
        static let escaped: UInt64 = 1 << 8

        @inline(__always) var kind: UInt64 { a & 0xFF }
        @inline(__always) var length: Int { Int(truncatingIfNeeded: a >> 32) }
        @inline(__always) var hasEscapes: Bool { a & Self.escaped != 0 }
    }

    final class Storage: @unchecked Sendable {
        let bytes: UnsafeMutableBufferPointer<UInt8>
        /// Set once the parse is done (the parser keeps its own until then).
        var nodes: UnsafeMutablePointer<Node>? = nil

        init(copying text: UnsafeBufferPointer<UInt8>) {
            bytes = .allocate(capacity: max(text.count, 1))
            if let base = text.baseAddress { bytes.baseAddress!.initialize(from: base, count: text.count) }
        }

        deinit {
            bytes.deallocate()
            nodes?.deallocate()
        }
    }

    let storage: Storage
    /// The text's length (the storage holds at least a byte).
    public let count: Int

    /// The text, as received.
    public var bytes: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: storage.bytes.baseAddress, count: count) }

    /// Parses exactly one JSON value (surrounding whitespace allowed) of at most `maxValues` values (each number,
    /// string, literal, array and object counts one). The text is copied.
    public init(parsing text: UnsafeBufferPointer<UInt8>, maxValues: Int = .max) throws(JSONParseError) {
        guard text.count < Int(UInt32.max) else { throw JSONParseError(offset: 0, reason: "a text of 4 GiB or more") }
        storage = Storage(copying: text)
        count = text.count
        var p = DocumentParser(UnsafeBufferPointer(start: storage.bytes.baseAddress, count: text.count))
        defer { p.nodes.deallocate() }
        p.budget = maxValues
        p.skipWhitespace()
        try p.value(depth: 0)
        p.skipWhitespace()
        guard p.i == p.n else { throw p.fail("unexpected text after the value") }
        storage.nodes = p.take()
        values = maxValues == .max ? p.count : maxValues - p.budget
    }

    public init(parsing bytes: [UInt8], maxValues: Int = .max) throws(JSONParseError) {
        self = try bytes.withUnsafeBufferPointer { (b) throws(JSONParseError) -> JSONDocument in
            try JSONDocument(parsing: b, maxValues: maxValues)
        }
    }

    /// Values in the document (what counts against `maxValues`).
    public let values: Int

    /// The document's value as a tree.
    public var json: JSON { withRoot { $0.json } }

    /// Reads the root value in place; the `Value` is valid inside `body` only.
    func withRoot<T>(_ body: (Value) throws -> T) rethrows -> T {
        try withExtendedLifetime(storage) {
            try body(Value(nodes: UnsafePointer(storage.nodes!), text: UnsafePointer(storage.bytes.baseAddress!), index: 0))
        }
    }

    /// A value of a document, read in place (no reference counting): valid only inside `withRoot`.
    struct Value {
        let nodes: UnsafePointer<Node>
        let text: UnsafePointer<UInt8>
        let index: Int

        @inline(__always) var node: Node { nodes[index] }
        @inline(__always) func at(_ k: Int) -> Value { Value(nodes: nodes, text: text, index: k) }
        /// The index of the node after this value and its descendants.
        @inline(__always) var next: Int {
            let n = node
            return n.kind >= Node.array ? Int(truncatingIfNeeded: n.b) : index + 1
        }

        /// The raw text of a string without escapes (its value's UTF-8), nil for other strings and other values.
        @inline(__always) var plainText: UnsafeBufferPointer<UInt8>? {
            let n = node
            guard n.kind == Node.string, !n.hasEscapes else { return nil }
            return UnsafeBufferPointer(start: text + Int(truncatingIfNeeded: n.b), count: n.length)
        }

        /// A string's value as UTF-8 (escapes resolved), for strings only.
        func withUTF8<T>(_ body: (UnsafeBufferPointer<UInt8>) -> T) -> T? {
            let n = node
            guard n.kind == Node.string else { return nil }
            let raw = UnsafeBufferPointer(start: text + Int(truncatingIfNeeded: n.b), count: n.length)
            guard n.hasEscapes else { return body(raw) }
            return JSONDocument.unescaped(raw).withUnsafeBufferPointer(body)
        }
    }

    /// A string's text with its escapes resolved (the text was checked when parsed).
    static func unescaped(_ raw: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var i = 0
        func hex4(_ k: Int) -> UInt32 {
            var v: UInt32 = 0
            for j in k..<(k + 4) {
                let c = raw[j]
                v = v << 4 | UInt32(c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10)
            }
            return v
        }
        while i < raw.count {
            let c = raw[i]
            guard c == UInt8(ascii: "\\") else { out.append(c); i += 1; continue }
            let e = raw[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex4(i)
                i += 4
                if scalar >= 0xD800 && scalar < 0xDC00 {
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (hex4(i + 2) - 0xDC00)
                    i += 6
                }
                out.append(contentsOf: String(Character(Unicode.Scalar(scalar)!)).utf8)
            default: out.append(e)  // " \ /
            }
        }
        return out
    }
}

/// The parser: writes nodes as it goes.
struct DocumentParser {
    let p: UnsafePointer<UInt8>
    let n: Int
    var i = 0
    /// Values this parse may still make.
    var budget = Int.max
    var nodes: UnsafeMutablePointer<JSONDocument.Node>
    var count = 0
    var capacity: Int

    init(_ b: UnsafeBufferPointer<UInt8>) {
        p = b.baseAddress!  // the storage's: an empty text still has a (never read) byte
        n = b.count
        // A fault record is about a node for seven bytes; grown by doubling when a text is denser.
        capacity = b.count / 6 + 8
        nodes = .allocate(capacity: capacity)
    }

    /// The nodes, handed over (the parser keeps an empty buffer, for its `deallocate`).
    mutating func take() -> UnsafeMutablePointer<JSONDocument.Node> {
        defer { nodes = .allocate(capacity: 1); capacity = 1 }
        return nodes
    }

    @inline(never) mutating func grow() {
        let bigger = UnsafeMutablePointer<JSONDocument.Node>.allocate(capacity: capacity * 2)
        bigger.moveInitialize(from: nodes, count: count)
        nodes.deallocate()
        nodes = bigger
        capacity *= 2
    }

    func fail(_ reason: String) -> JSONParseError { JSONParseError(offset: i, reason: reason) }

    @inline(__always) mutating func skipWhitespace() {
        while i < n {
            let c = p[i]
            guard c <= 0x20, c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 else { return }
            i += 1
        }
    }

    /// Appends a node; returns its index.
    @inline(__always) @discardableResult
    mutating func append(_ a: UInt64, _ b: UInt64) -> Int {
        if count == capacity { grow() }
        let k = count
        (nodes + k).initialize(to: JSONDocument.Node(a: a, b: b))
        count = k + 1
        return k
    }

    /// Whether the eight bytes of `w` are all ASCII digits.
    @inline(__always) static func eightDigits(_ w: UInt64) -> Bool {
        ((w &+ 0x4646_4646_4646_4646) | (w &- 0x3030_3030_3030_3030)) & 0x8080_8080_8080_8080 == 0
    }

    /// The value of eight ASCII digits, the first in the lowest byte.
    @inline(__always) static func valueOfEightDigits(_ w: UInt64) -> UInt64 {
        var v = w &- 0x3030_3030_3030_3030
        v = v &* 10 &+ (v >> 8)
        let mask: UInt64 = 0x0000_00FF_0000_00FF
        return ((v & mask) &* 0x000F_4240_0000_0064 &+ ((v >> 16) & mask) &* 0x0000_2710_0000_0001) >> 32
    }

    mutating func literal(_ word: StaticString, _ kind: UInt64) throws(JSONParseError) {
        let len = word.utf8CodeUnitCount
        guard i + len <= n else { throw fail("unexpected end") }
        // The first four bytes as one word ("true", "null", "fals"), then what is left of "false".
        let w = UnsafeRawPointer(p).loadUnaligned(fromByteOffset: i, as: UInt32.self)
        guard w == UnsafeRawPointer(word.utf8Start).loadUnaligned(as: UInt32.self),
              len == 4 || p[i + 4] == word.utf8Start[4] else {
            throw fail("unexpected character")
        }
        i += len
        append(kind, 0)
    }

    mutating func value(depth: Int) throws(JSONParseError) {
        guard depth < 128 else { throw fail("nested deeper than 128 levels") }
        budget -= 1
        guard budget >= 0 else { throw fail("more values than this reader takes") }
        guard i < n else { throw fail("unexpected end") }
        switch p[i] {
        case UInt8(ascii: "{"): try object(depth: depth)
        case UInt8(ascii: "["): try array(depth: depth)
        case UInt8(ascii: "\""): try string()
        case UInt8(ascii: "t"): try literal("true", JSONDocument.Node.trueValue)
        case UInt8(ascii: "f"): try literal("false", JSONDocument.Node.falseValue)
        case UInt8(ascii: "n"): try literal("null", JSONDocument.Node.null)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
        default: throw fail("unexpected character")
        }
    }

    /// A member's or element's value: scalars here (most values), containers through `value`.
    @inline(__always) mutating func element(depth: Int) throws(JSONParseError) {
        guard depth < 127 else { throw fail("nested deeper than 128 levels") }
        guard i < n else { throw fail("unexpected end") }
        let c = p[i]
        if c &- 0x31 < 9 {
            // A plain integer of at most 18 digits followed by neither '.' nor an exponent (most numbers) is
            // read here; anything else by `number`, from the start.
            budget -= 1
            guard budget >= 0 else { throw fail("more values than this reader takes") }
            var k = i + 1
            var v = UInt64(c &- 0x30)
            while k < n {
                let d = p[k] &- 0x30
                guard d < 10 else { break }
                v = v &* 10 &+ UInt64(d)
                k += 1
            }
            if k - i <= 18 && (k == n || (p[k] != UInt8(ascii: ".") && p[k] | 0x20 != UInt8(ascii: "e"))) {
                append(JSONDocument.Node.int, v)
                i = k
            } else {
                try number()
            }
        } else if c == UInt8(ascii: "0") || c == UInt8(ascii: "-") {
            budget -= 1
            guard budget >= 0 else { throw fail("more values than this reader takes") }
            try number()
        } else if c == UInt8(ascii: "\"") {
            budget -= 1
            guard budget >= 0 else { throw fail("more values than this reader takes") }
            if shortString() == nil { try string() }
        } else {
            try value(depth: depth + 1)
        }
    }

    mutating func array(depth: Int) throws(JSONParseError) {
        i += 1
        let me = append(JSONDocument.Node.array, 0)
        var count: UInt64 = 0
        skipWhitespace()
        if i < n, p[i] == UInt8(ascii: "]") {
            i += 1
        } else {
            while true {
                skipWhitespace()
                try element(depth: depth)
                count += 1
                skipWhitespace()
                guard i < n else { throw fail("unexpected end") }
                if p[i] == UInt8(ascii: ",") { i += 1; continue }
                if p[i] == UInt8(ascii: "]") { i += 1; break }
                throw fail("expected ',' or ']'")
            }
        }
        nodes[me] = JSONDocument.Node(a: JSONDocument.Node.array | count << 32, b: UInt64(self.count))
    }

    /// A string at `i` (its opening quote) shorter than eight bytes, plain ASCII, with eight bytes of text from
    /// its first: appended in one load, with its bytes as a word (zero past its end). Nil (nothing read) for any
    /// other string.
    @inline(__always) mutating func shortString() -> (node: Int, word: UInt64, length: Int)? {
        let start = i + 1
        guard start + 8 <= n else { return nil }
        let w = UnsafeRawPointer(p).loadUnaligned(fromByteOffset: start, as: UInt64.self)
        let hits = Self.stops(w)
        guard hits != 0 else { return nil }
        let length = hits.trailingZeroBitCount >> 3
        guard p[start + length] == UInt8(ascii: "\"") else { return nil }
        let k = append(JSONDocument.Node.string | UInt64(length) << 32, UInt64(start))
        i = start + length + 1
        return (k, w & ((1 << (UInt64(length) * 8)) &- 1), length)
    }

    /// `hash` of a name shorter than eight bytes, from its bytes as a word.
    @inline(__always) static func shortHash(_ word: UInt64, _ length: Int) -> UInt64 {
        let h = ((0x9E37_79B9_7F4A_7C15 &* UInt64(length + 1)) ^ word) &* 0xC4CE_B9FE_1A85_EC53
        return h ^ (h >> 32)
    }

    mutating func object(depth: Int) throws(JSONParseError) {
        i += 1
        let me = append(JSONDocument.Node.object, 0)
        var members: UInt64 = 0
        // Repeated names: a 64-bit filter of the names' hashes finds the few worth comparing; past 32 members, a
        // set of the hashes (an object of thousands of members costs linear time in all).
        var filter: UInt64 = 0
        var hashes: Set<UInt64>? = nil
        skipWhitespace()
        if i < n, p[i] == UInt8(ascii: "}") {
            i += 1
        } else {
            while true {
                skipWhitespace()
                guard i < n, p[i] == UInt8(ascii: "\"") else { throw fail("expected a member name") }
                let nameStart = i
                let key: Int, h: UInt64
                if let short = shortString() {
                    key = short.node
                    h = Self.shortHash(short.word, short.length)
                } else {
                    key = try string()
                    h = withName(key) { Self.hash($0) }
                }
                members += 1
                var check: Bool
                if members <= 32 {
                    let bit: UInt64 = 1 << (h >> 58)
                    check = filter & bit != 0
                    filter |= bit
                    if members == 32 {
                        var all = memberHashes(object: me, upTo: key)
                        all.insert(h)
                        hashes = all
                    }
                } else {
                    check = !hashes!.insert(h).inserted
                }
                if check, repeats(object: me, name: key) {
                    i = nameStart
                    let name = withName(key) { String(decoding: $0, as: UTF8.self) }
                    throw fail("duplicate member \"\(name)\"")
                }
                if i < n, p[i] == UInt8(ascii: ":") {
                    i += 1
                } else {
                    skipWhitespace()
                    guard i < n, p[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                    i += 1
                }
                skipWhitespace()
                try element(depth: depth)
                guard i < n else { throw fail("unexpected end") }
                var c = p[i]
                if c <= 0x20 {
                    skipWhitespace()
                    guard i < n else { throw fail("unexpected end") }
                    c = p[i]
                }
                if c == UInt8(ascii: ",") { i += 1; continue }
                if c == UInt8(ascii: "}") { i += 1; break }
                throw fail("expected ',' or '}'")
            }
        }
        nodes[me] = JSONDocument.Node(a: JSONDocument.Node.object | members << 32, b: UInt64(self.count))
    }

    /// A name's hash (of its value's bytes), for finding repeated names.
    @inline(__always) static func hash(_ s: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15 &* UInt64(s.count + 1)
        var k = 0
        let base = UnsafeRawPointer(s.baseAddress ?? UnsafePointer(bitPattern: 1)!)
        while k + 8 <= s.count {
            h = (h ^ base.loadUnaligned(fromByteOffset: k, as: UInt64.self)) &* 0xFF51_AFD7_ED55_8CCD
            k += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while k < s.count { tail |= UInt64(s[k]) << shift; shift += 8; k += 1 }
        h = (h ^ tail) &* 0xC4CE_B9FE_1A85_EC53
        return h ^ (h >> 32)
    }

    /// The value bytes of a name node, for `body` (escapes resolved only when it has some).
    @inline(__always) func withName<T>(_ k: Int, _ body: (UnsafeBufferPointer<UInt8>) -> T) -> T {
        let node = nodes[k]
        let raw = UnsafeBufferPointer(start: p + Int(node.b), count: node.length)
        return node.hasEscapes ? JSONDocument.unescaped(raw).withUnsafeBufferPointer(body) : body(raw)
    }

    /// The hashes of the names of `object`'s members before the name node `upTo`.
    func memberHashes(object: Int, upTo: Int) -> Set<UInt64> {
        var out: Set<UInt64> = []
        var k = object + 1
        while k < upTo {
            out.insert(withName(k) { Self.hash($0) })
            let v = nodes[k + 1]
            k = v.kind >= JSONDocument.Node.array ? Int(v.b) : k + 2
        }
        return out
    }

    /// Whether the name node `name` repeats a name of `object` before it (compared as values: escapes resolved).
    func repeats(object: Int, name: Int) -> Bool {
        withName(name) { mine in
            var k = object + 1
            while k < name {
                let same = withName(k) { $0.count == mine.count && (mine.count == 0 || memcmp($0.baseAddress!, mine.baseAddress!, mine.count) == 0) }
                if same { return true }
                let v = nodes[k + 1]
                k = v.kind >= JSONDocument.Node.array ? Int(v.b) : k + 2
            }
            return false
        }
    }

    mutating func number() throws(JSONParseError) {
        let start = i
        var negative = false
        if p[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        guard i < n, p[i] &- 0x30 < 10 else { throw fail("expected a digit") }
        if p[i] == 0x30, i + 1 < n, p[i + 1] &- 0x30 < 10 { throw fail("leading zero") }
        var magnitude: UInt64 = 0
        let digitsStart = i
        var k = i
        // Eight digits at a time while eight bytes are digits, then one at a time.
        while k + 8 <= n {
            let w = UnsafeRawPointer(p).loadUnaligned(fromByteOffset: k, as: UInt64.self)
            guard Self.eightDigits(w) else { break }
            magnitude = magnitude &* 100_000_000 &+ Self.valueOfEightDigits(w)
            k += 8
        }
        while k < n {
            let d = p[k] &- 0x30
            guard d < 10 else { break }
            magnitude = magnitude &* 10 &+ UInt64(d)
            k += 1
        }
        i = k
        // Nineteen digits cannot overflow; more are read again with the overflow checked.
        var overflow = false
        if i - digitsStart > 19 {
            magnitude = 0
            for k in digitsStart..<i {
                let (m1, o1) = magnitude.multipliedReportingOverflow(by: 10)
                let (m2, o2) = m1.addingReportingOverflow(UInt64(p[k] - 0x30))
                overflow = overflow || o1 || o2
                magnitude = m2
            }
        }
        var isFloat = false
        if i < n, p[i] == UInt8(ascii: ".") {
            isFloat = true
            i += 1
            guard i < n, p[i] &- 0x30 < 10 else { throw fail("expected a digit after '.'") }
            while i < n, p[i] &- 0x30 < 10 { i += 1 }
        }
        if i < n, p[i] | 0x20 == UInt8(ascii: "e") {
            isFloat = true
            i += 1
            if i < n, p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-") { i += 1 }
            guard i < n, p[i] &- 0x30 < 10 else { throw fail("expected an exponent") }
            while i < n, p[i] &- 0x30 < 10 { i += 1 }
        }
        if !isFloat && !overflow {
            if !negative {
                append(magnitude <= UInt64(Int64.max) ? JSONDocument.Node.int : JSONDocument.Node.uint, magnitude)
                return
            }
            if magnitude <= UInt64(Int64.max) + 1 {
                append(JSONDocument.Node.int, UInt64(bitPattern: 0 &- Int64(bitPattern: magnitude)))
                return
            }
        }
        append(JSONDocument.Node.number | UInt64(i - start) << 32, UInt64(start))
    }

    /// Whether any of the eight bytes in `w` is a quote, a backslash, a control byte or not ASCII.
    @inline(__always) static func stops(_ w: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
        let quote = w ^ (ones &* 0x22), slash = w ^ (ones &* 0x5C)
        return (((quote &- ones) & ~quote) | ((slash &- ones) & ~slash) | ((w &- ones &* 0x20) & ~w) | w) & highs
    }

    /// A string at `i` (its opening quote); appends its node and returns the node's index.
    @discardableResult
    mutating func string() throws(JSONParseError) -> Int {
        i += 1
        let start = i
        var flags: UInt64 = 0
        var ascii = true
        let raw = UnsafeRawPointer(p)
        while true {
            // Eight bytes at a time to the first that is not plain ASCII text (the lowest flagged byte is exact).
            while i + 8 <= n {
                let hits = Self.stops(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                if hits != 0 { i += hits.trailingZeroBitCount >> 3; break }
                i += 8
            }
            guard i < n else { throw fail("unterminated string") }
            let c = p[i]
            if c == UInt8(ascii: "\"") { break }
            if c == UInt8(ascii: "\\") {
                flags = JSONDocument.Node.escaped
                try escape()
                continue
            }
            if c < 0x20 { throw fail("control character in a string") }
            if c >= 0x80 { ascii = false }
            i += 1
        }
        if !ascii, String(validating: UnsafeBufferPointer(start: p + start, count: i - start), as: UTF8.self) == nil {
            i = start  // where the old reader said it
            throw fail("invalid UTF-8 in a string")
        }
        let k = append(JSONDocument.Node.string | flags | UInt64(i - start) << 32, UInt64(start))
        i += 1
        return k
    }

    /// Checks the escape at `i` (a backslash) and moves past it.
    mutating func escape() throws(JSONParseError) {
        i += 1
        guard i < n else { throw fail("unexpected end in an escape") }
        let e = p[i]
        i += 1
        switch e {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
             UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
            return
        case UInt8(ascii: "u"):
            let scalar = try hex4()
            if scalar >= 0xD800 && scalar < 0xDC00 {
                guard i + 2 <= n, p[i] == UInt8(ascii: "\\"), p[i + 1] == UInt8(ascii: "u") else { throw fail("unpaired surrogate") }
                i += 2
                let low = try hex4()
                guard low >= 0xDC00 && low < 0xE000 else { throw fail("unpaired surrogate") }
            } else if scalar >= 0xDC00 && scalar < 0xE000 {
                throw fail("invalid code point")
            }
        default: throw fail("bad escape")
        }
    }

    mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard i + 4 <= n else { throw fail("unexpected end in \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = p[i]
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
}

// MARK: The tree, from a document

extension JSONDocument.Value {
    /// This value as a tree.
    var json: JSON {
        let n = node
        switch n.kind {
        case JSONDocument.Node.null: return .null
        case JSONDocument.Node.falseValue: return .bool(false)
        case JSONDocument.Node.trueValue: return .bool(true)
        case JSONDocument.Node.int: return .int(Int64(bitPattern: n.b))
        case JSONDocument.Node.uint: return .uint(n.b)
        case JSONDocument.Node.number:
            return .number(String(decoding: UnsafeBufferPointer(start: text + Int(n.b), count: n.length), as: UTF8.self))
        case JSONDocument.Node.string: return .string(withUTF8 { String(decoding: $0, as: UTF8.self) }!)
        case JSONDocument.Node.array:
            var out: [JSON] = []
            out.reserveCapacity(n.length)
            var k = index + 1
            let end = Int(n.b)
            while k < end {
                let e = at(k)
                out.append(e.json)
                k = e.next
            }
            return .array(out)
        default:
            var out: [(String, JSON)] = []
            out.reserveCapacity(n.length)
            var k = index + 1
            let end = Int(n.b)
            while k < end {
                let name = at(k).withUTF8 { String(decoding: $0, as: UTF8.self) }!
                let v = at(k + 1)
                out.append((name, v.json))
                k = v.next
            }
            return .object(out)
        }
    }
}

extension JSONDocument: Equatable {
    /// Documents of the same text are the same document.
    public static func == (a: JSONDocument, b: JSONDocument) -> Bool { a.bytes.elementsEqual(b.bytes) }
}
