@testable import Schema
import Testing
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
}
