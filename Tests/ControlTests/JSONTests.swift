@testable import Schema
import Testing
import TestSupport
@testable import ControlProtocol

struct JSONTests {
    /// Strings are scanned eight bytes at a time: every byte that needs an escape, at every offset in and across
    /// those words, is escaped on the way out and read back on the way in.
    @Test func escapesAtEveryOffsetRoundTrip() throws {
        for special in ["\"", "\\", "\n", "\u{01}", "\u{1F}", "é", "\t"] {
            for at in 0..<20 {
                let text = String(repeating: "a", count: at) + special + String(repeating: "b", count: 19 - at)
                let json = JSON.string(text).serialized
                #expect(try JSON.parse(json) == .string(text), "\(json)")
                #expect(!json.dropFirst().dropLast().contains("\n") || special != "\n", "a newline goes out escaped: \(json)")
            }
        }
        #expect(throws: JSONParseError.self) { try JSON.parse("\"" + String(repeating: "a", count: 13) + "\u{01}\"") }
    }

    /// Integers are written digit by digit into the output: each is what Swift's own decimal text says, at every
    /// length and at both ends of both types.
    @Test func integersAreWrittenAsTheirDecimalText() {
        var rng = SplitMix64(state: 0xD1617)
        var unsigned: [UInt64] = [0, 1, 9, 10, 11, 99, 100, UInt64.max, UInt64.max - 1, UInt64(Int64.max), UInt64(Int64.max) + 1]
        var power: UInt64 = 1
        for _ in 0..<19 { power *= 10; unsigned += [power - 1, power, power + 1] }
        unsigned += (0..<1000).map { _ in rng.next() >> (rng.next() % 64) }
        for v in unsigned { #expect(JSON.uint(v).serialized == String(v)) }
        let signed: [Int64] = [0, -1, 1, -9, -10, Int64.min, Int64.min + 1, Int64.max] + unsigned.map { Int64(bitPattern: $0) }
        for v in signed { #expect(JSON.int(v).serialized == String(v)) }
    }

    @Test func roundTripsExactIntegersAndOrder() throws {
        let text = #"{"b":18446744073709551615,"a":-9223372036854775808,"c":[1.5,true,null,"x\"\n\u00e9"],"d":{}}"#
        let v = try JSON.parse(text)
        #expect(v["b"] == .uint(UInt64.max))
        #expect(v["a"] == .int(Int64.min))
        #expect(v["c"]?.arrayValue?[3] == .string("x\"\né"))
        #expect(v.objectMembers?.map(\.0) == ["b", "a", "c", "d"])
        #expect(try JSON.parse(v.serialized) == v)
    }

    @Test(arguments: ["", "{", "{\"a\" 1}", "[1,]", "01", "\"\u{1}\"", "{\"a\":1,\"a\":2}", "nul", "1 2", "\"\\ud800\""])
    func refusesMalformedText(_ text: String) {
        #expect(throws: JSONParseError.self) { try JSON.parse(text) }
    }

    @Test func refusesDeepNesting() {
        let deep = String(repeating: "[", count: 200) + String(repeating: "]", count: 200)
        #expect(throws: JSONParseError.self) { try JSON.parse(deep) }
        let ok = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect((try? JSON.parse(ok)) != nil)
    }

    @Test func parsesSurrogatePairsAndControlEscapes() throws {
        #expect(try JSON.parse(#""\ud83d\ude00""#) == .string("😀"))
        #expect(JSON.string("a\u{1}b").serialized == #""a\u0001b""#)
    }
}

extension JSONTests {
    /// An object with 20,000 members parses in linear time and still refuses a duplicate (the duplicate check
    /// built a Set of every member at each member past 32: seconds for a few thousand). Counted, not timed:
    /// the parse of twice the members must not take more than about twice as long is a benchmark's business;
    /// here the duplicate is found at the end of a large object, and a large object with none is accepted.
    @Test func aLargeObjectIsAcceptedAndItsLastDuplicateFound() throws {
        let members = (0..<20_000).map { "\"m\($0)\":\($0)" }
        let ok = "{" + members.joined(separator: ",") + "}"
        #expect(try JSON.parse(ok).objectMembers?.count == 20_000)
        let dup = "{" + members.joined(separator: ",") + ",\"m7\":1}"
        #expect(throws: JSONParseError.self) { try JSON.parse(dup) }
    }

    /// Records hand their members to `JSONOutput` by `JSONName`: literal names are copied (a one-character literal too,
    /// and one that needs escapes is escaped), other names are escaped; into an output that starts with no room, the
    /// object reads back as the tree of the same members.
    @Test func membersNamedByLiteralsOrStringsReadBackAsTheirTree() throws {
        let out = JSONOutput(capacity: 0)
        let quoted = "say \"hi\"\n", empty = "", accented = "é"
        let names: [JSONName] = ["time-ns", "a", JSONName(quoted), JSONName(empty), "since-page-fault-ns", JSONName(accented),
                                 "a \"literal\"\t"]
        let values: [JSON] = [.u(UInt64.max), .int(-1), .string("x\u{1}y"), .null, .array([.bool(true), .i(0)]), .object([("k", .string(""))]),
                              .string("\\")]
        out.append(UInt8(ascii: "{"))
        for (i, (n, v)) in zip(names, values).enumerated() { out.member(n, v, first: i == 0) }
        out.append(UInt8(ascii: "}"))
        let tree = JSON.object(zip(names.map(\.string), values).map { ($0, $1) })
        #expect(try JSON.parse(String(decoding: out.bytes, as: UTF8.self)) == tree)
        #expect(String(decoding: out.bytes, as: UTF8.self) == tree.serialized)
    }
}

extension JSONTests {
    /// Random trees, written compactly and with whitespace everywhere it may go, read back equal: every path of the
    /// parser (names and strings short and long, escaped or not, near the text's end; integers of every length up
    /// to and past 64 bits, negative, fractions and exponents; literals; nesting) against the writer.
    @Test func randomTreesReadBackAsWritten() throws {
        var rng = SplitMix64(state: 0x5EED)
        let pieces = ["a", "seq", "time-ns", "attribute", "\"", "\\", "é", "\u{1}", "😀", "\n", "MEMORY_FAULT", ""]
        func text() -> String { (0..<Int(rng.next() % 4)).map { _ in pieces[Int(rng.next() % UInt64(pieces.count))] }.joined() }
        func number() -> JSON {
            switch rng.next() % 6 {
            case 0: .int(Int64(bitPattern: rng.next()))
            case 1: .uint(UInt64.max - rng.next() % 1000)
            case 2: .int(Int64(rng.next() % 1_000_000_000_000_000_000))
            case 3: .int(Int64(rng.next() % 100))
            case 4: .number(["1.5", "-0.25", "1e5", "12E-3", "18446744073709551616", "-9223372036854775809"][Int(rng.next() % 6)])
            default: .int(-Int64(rng.next() % 1000))
            }
        }
        func value(_ depth: Int) -> JSON {
            switch rng.next() % (depth > 4 ? 4 : 6) {
            case 0: return number()
            case 1: return .string(text())
            case 2: return [.null, .bool(true), .bool(false)][Int(rng.next() % 3)]
            case 3: return number()
            case 4: return .array((0..<Int(rng.next() % 5)).map { _ in value(depth + 1) })
            default:
                var seen: Set<String> = []
                return .object((0..<Int(rng.next() % 6)).compactMap { k in
                    let name = text() + (k % 2 == 0 ? "" : String(k))
                    return seen.insert(name).inserted ? (name, value(depth + 1)) : nil
                })
            }
        }
        for _ in 0..<3000 {
            let v = value(0)
            let compact = v.serialized
            #expect(try JSON.parse(compact) == v, "\(compact)")
            #expect(try JSON.parse(v.pretty(inline: 0)) == v, "\(compact)")
        }
    }

    @Test func numbersReadAsTheyAre() throws {
        #expect(try JSON.parse("[123456789012345678,1234567890123456789,12345678901234567890,18446744073709551616]")
                == .array([.int(123_456_789_012_345_678), .int(1_234_567_890_123_456_789), .uint(12_345_678_901_234_567_890),
                           .number("18446744073709551616")]))
        #expect(try JSON.parse("[7,7.5,7e1,7E1,-7,-0,0]") == .array([.int(7), .number("7.5"), .number("7e1"), .number("7E1"), .int(-7), .int(0), .int(0)]))
        for bad in ["[01]", "[1.]", "[1e]", "[-]", "[tru]", "[nul]", "[falsy]", "{\"a\":1,\"\\u0061\":2}"] {
            #expect(throws: JSONParseError.self, "\(bad)") { try JSON.parse(bad) }
        }
    }
}

