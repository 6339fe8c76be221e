@testable import Schema
import Testing
@testable import ControlProtocol

/// The inspector's fast MEMORY_FAULT decoder must read exactly what the general JSON path reads, or decline.
struct FaultBatchTests {
    /// What the general path makes of a message (nil: not JSON).
    func general(_ text: String) -> FaultBatch? {
        guard let j = try? JSON.parse(text) else { return nil }
        return FaultBatch(data: j["data"])
    }

    static let vmmLine = #"{"event":"MEMORY_FAULT","data":{"records":["#
        + #"{"seq":7,"time-ns":123456789,"vcpu":1,"gpa":1048576,"size":4096,"flags":8,"private":true,"access":"write","errno":null,"source":"vmm","exit":"MMIO","attribute":"shared","slot":3,"action":"converted"},"#
        + #"{"seq":8,"time-ns":123456999,"vcpu":null,"gpa":18446744073709547520,"size":4096,"flags":0,"private":false,"access":"read","errno":"EHWPOISON","source":"kernel","exit":"MEMORY_FAULT","attribute":"private","slot":null,"action":"injected"}"#
        + #"],"dropped":5},"timestamp":{"seconds":1700000000,"microseconds":12}}"#

    /// Lines the fast path must take, each read the same as the general path reads it.
    static let accepted: [String] = [
        vmmLine,
        // Members in another order, whitespace, an unknown member, an escaped string, a huge number.
        #"{"event":"MEMORY_FAULT" , "data" : { "dropped":0, "records" : [ { "gpa" : 4096 , "x":[1,{"y":2}], "seq":1, "access":"wr\u0069te", "size":1e3 } ] } }"#,
        // Values of the wrong type read as absent; a record without gpa is skipped.
        #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":1,"gpa":8192,"vcpu":-1,"private":"yes","flags":1.5,"errno":7},{"seq":2},5,"s"]}}"#,
        // No data at all, empty records, records not an array.
        #"{"event":"MEMORY_FAULT"}"#,
        #"{"event":"MEMORY_FAULT","data":{"records":[]}}"#,
        #"{"event":"MEMORY_FAULT","data":{"records":{"seq":1}}}"#,
        // A string the VMM does not write, numbers with leading zeros only as 0.
        #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":0,"gpa":0,"access":"sideways","source":"vmm\"x"}]}}"#,
    ]

    @Test func readsWhatTheGeneralPathReads() throws {
        for line in Self.accepted {
            let fast = FaultBatch.decodeEvent(Array(line.utf8))
            #expect(fast != nil, "the fast path declined \(line)")
            #expect(fast == general(line), "\(line)")
        }
        let vmm = try #require(FaultBatch.decodeEvent(Array(Self.vmmLine.utf8)))
        #expect(vmm.records.count == 2 && vmm.dropped == 5)
        #expect(vmm.records[1].gpa == 18_446_744_073_709_547_520 && vmm.records[1].errno == "EHWPOISON" && vmm.records[1].vcpu == nil)
        #expect(vmm.records[0].access == "write" && vmm.records[0].slot == 3 && vmm.records[0].isPrivate)
    }

    @Test func declinesWhatIsNotAFaultEventOrNotJSON() {
        for line in [
            #"{"event":"MEMORY_ATTRIBUTES_CHANGED","data":{}}"#,
            #"{"return":{}}"#,
            #"{"data":{"records":[]},"event":"MEMORY_FAULT"}"#,      // event not first: left to the general path
            #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":1,"seq":2,"gpa":0}]}}"#,  // repeated member
            #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":01,"gpa":0}]}}"#,          // leading zero
            #"{"event":"MEMORY_FAULT","data":{"records":[]}} x"#,
            #"{"event":"MEMORY_FAULT","data":{"records":[]}"#,
            #"{"event":"MEMORY_FAULT","event":"MEMORY_FAULT"}"#,
        ] {
            #expect(FaultBatch.decodeEvent(Array(line.utf8)) == nil, "\(line)")
        }
    }

    /// Random damage to real lines: whatever the fast path still accepts must be valid JSON read the same way.
    @Test func damagedLinesAreDeclinedOrReadTheSame() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array(#"{}[]",:0123456789 -.etrufalsn\"#.utf8)
        var accepted = 0
        for round in 0..<20_000 {
            var bytes = Array(Self.accepted[round % Self.accepted.count].utf8)
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let k = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes.remove(at: k)
                case 1: bytes.insert(alphabet.randomElement(using: &rng)!, at: k)
                default: bytes[k] = alphabet.randomElement(using: &rng)!
                }
                if bytes.isEmpty { bytes = [0x7B] }
            }
            guard let fast = FaultBatch.decodeEvent(bytes) else { continue }
            accepted += 1
            var copy = bytes
            let parsed = try? JSON.parse(bytes: &copy)
            #expect(parsed != nil, "accepted invalid JSON: \(String(decoding: bytes, as: UTF8.self))")
            #expect(fast == FaultBatch(data: parsed?["data"]), "\(String(decoding: bytes, as: UTF8.self))")
        }
        #expect(accepted > 100, "the damage should leave some lines valid")
    }

    /// A framer that decodes fault lines gives the same batches, in the same order among the other messages,
    /// however the stream is cut.
    @Test func framerDecodesFaultLinesWhereverTheStreamIsCut() {
        let reply = #"{"return":{"name":"x"},"id":"a"}"#
        let other = #"{"event":"MEMSLOTS_CHANGED","data":{"generation":2}}"#
        let damaged = #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":1,"seq":2}]}}"#  // refused by both paths
        let stream = Array((Self.vmmLine + "\n" + reply + "\r\n" + Self.accepted[1] + "\n" + other + damaged + "\n"
            + Self.vmmLine + "\n").utf8)

        func describe(_ frames: [Framer.Frame]) -> [String] {
            frames.map { f in
                switch f {
                case .faults(let b): "faults \(b.records.map(\.seq)) dropped \(b.dropped)"
                case .message(var m):
                    if let j = try? JSON.parse(bytes: &m), j["event"]?.stringValue == "MEMORY_FAULT" {
                        "faults \(FaultBatch(data: j["data"]).records.map(\.seq)) dropped \(FaultBatch(data: j["data"]).dropped)"
                    } else { String(decoding: m, as: UTF8.self) }
                case .tooLong: "<too long>"
                }
            }
        }
        var plain = Framer()
        let expected = describe(plain.feed(stream))
        #expect(expected.count == 6)
        for cut in [1, 2, 7, 64, 333, stream.count] {
            var f = Framer(decodeFaults: true)
            var frames: [Framer.Frame] = []
            var i = 0
            while i < stream.count {
                frames += f.feed(stream[i..<min(i + cut, stream.count)])
                i += cut
            }
            #expect(describe(frames) == expected, "cut every \(cut) bytes")
            #expect(frames.contains { if case .faults = $0 { true } else { false } }, "the fast path was used")
            #expect(f.pendingBytes == 0)
        }
    }

    @Test func aFaultLineLongerThanTheLimitIsRefusedAsBefore() {
        var f = Framer(maxMessage: 64, decodeFaults: true)
        let frames = f.feed(Array((Self.vmmLine + "\n{\"ok\":1}\n").utf8))
        #expect(frames.count == 2)
        #expect(frames.first == .tooLong)
        #expect(frames.last == .message(Array("{\"ok\":1}".utf8)))
    }
}
