import Foundation
import Inspector
@testable import Schema
import Testing
@testable import ControlProtocol

/// The client's event path reads each message in place from its parsed document (`JSONDocument`); it must read
/// exactly what the schema's reading of the same message's tree reads, for every message, and the framer that
/// parses whole lines must frame what the byte-by-byte framer frames.
struct FaultBatchTests {
    /// What the tree's reading makes of a message (nil: not JSON).
    func tree(_ bytes: [UInt8]) -> (event: Event?, batch: FaultBatch?)? {
        var copy = bytes
        guard let j = try? JSON.parse(bytes: &copy) else { return nil }
        let event = Event(message: j)
        if case .memoryFault(let b)? = event { return (event, b) }
        return (event, nil)
    }

    /// What the document's reading makes of it.
    func document(_ bytes: [UInt8]) -> (event: Event?, batch: FaultBatch?)? {
        guard let d = try? JSONDocument(parsing: bytes) else { return nil }
        return (Event(message: d), FaultBatch(event: d))
    }

    static let vmmLine = #"{"event":"MEMORY_FAULT","data":{"records":["#
        + #"{"seq":7,"time-ns":123456789,"vcpu":1,"gpa":1048576,"size":4096,"flags":8,"private":true,"access":"write","errno":null,"source":"vmm","exit":"MMIO","attribute":"shared","slot":3,"action":"converted"},"#
        + #"{"seq":8,"time-ns":123456999,"vcpu":null,"gpa":18446744073709547520,"size":4096,"flags":0,"private":false,"access":"read","errno":"EHWPOISON","source":"kernel","exit":"MEMORY_FAULT","attribute":"private","slot":null,"action":"injected"}"#
        + #"],"dropped":5},"timestamp":{"seconds":1700000000,"microseconds":12}}"#

    /// Messages as a peer may send them, each read the same both ways.
    static let messages: [String] = [
        vmmLine,
        // Members in another order, whitespace, an unknown member, escaped strings and names, a huge number.
        #"{"event":"MEMORY_FAULT" , "data" : { "dropped":0, "records" : [ { "g\u0070a" : 4096 , "x":[1,{"y":2}], "seq":1, "access":"wr\u0069te", "size":1e3 } ] } }"#,
        // Values of the wrong type read as absent; a record without gpa is skipped.
        #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":1,"gpa":8192,"vcpu":-1,"private":"yes","flags":1.5,"errno":7},{"seq":2},5,"s"]}}"#,
        // No data at all, empty records, records not an array, data not an object.
        #"{"event":"MEMORY_FAULT"}"#,
        #"{"event":"MEMORY_FAULT","data":{"records":[]}}"#,
        #"{"event":"MEMORY_FAULT","data":{"records":{"seq":1}}}"#,
        #"{"event":"MEMORY_FAULT","data":[1]}"#,
        // Strings the VMM does not write, an errno it does not know, event first or last.
        #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":0,"gpa":0,"access":"sideways","source":"vmm\"x","errno":"EÉ"}]}}"#,
        #"{"data":{"records":[{"seq":3,"gpa":4096}]},"event":"MEMORY_FAULT"}"#,
        // Other events, a reply, a greeting, an event name of someone else's.
        #"{"event":"MEMORY_ATTRIBUTES_CHANGED","data":{"gpa":4096,"size":8192,"private":true,"cause":"guest-request","vcpu":1}}"#,
        #"{"event":"VCPU_STATE_CHANGED","data":{"index":0,"state":"fault-stopped","reason":"policy \"pause\""}}"#,
        #"{"event":"FAULT_INJECTED","data":{"kind":"mce","vcpu":0,"gpa":4096,"size":4096,"detail":"x"}}"#,
        #"{"event":"GUEST_REPORT","data":{"vcpu":1,"kind":"heartbeat","value":18446744073709551615}}"#,
        #"{"event":"EVENTS_DROPPED","data":{"count":3,"where":"client"}}"#,
        #"{"event":"MEMSLOTS_CHANGED","data":{"generation":null}}"#,
        #"{"event":"STOP","timestamp":{"seconds":1,"microseconds":2}}"#,
        #"{"event":"FAULT_INJECTED"}"#,
        #"{"return":{"name":"x"},"id":"a"}"#,
        #"{"event":7}"#,
        #"[{"event":"MEMORY_FAULT"}]"#,
    ]

    @Test func aDocumentReadsAsItsTreeReads() throws {
        for m in Self.messages {
            let bytes = Array(m.utf8)
            let t = try #require(tree(bytes), "\(m)")
            let d = try #require(document(bytes), "\(m)")
            #expect(d.event == t.event, "\(m)")
            #expect(d.batch == t.batch, "\(m)")
        }
        let vmm = try #require(document(Array(Self.vmmLine.utf8))?.batch)
        #expect(vmm.records.count == 2 && vmm.dropped == 5)
        #expect(vmm.records[1].gpa == 18_446_744_073_709_547_520 && vmm.records[1].errno == "EHWPOISON" && vmm.records[1].vcpu == nil)
        #expect(vmm.records[0].access == .write && vmm.records[0].slot == 3 && vmm.records[0].isPrivate)
        let escaped = try #require(document(Array(Self.messages[1].utf8))?.batch)
        #expect(escaped.records.map(\.gpa) == [4096] && escaped.records[0].access == .write, "escaped names and values are read as values")
        #expect(document(Array(Self.messages[8].utf8))?.batch?.records.map(\.seq) == [3], "the event's name may come last")
    }

    /// Random damage to real lines: whatever still parses reads the same both ways.
    @Test func damagedLinesReadTheSameBothWays() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array(#"{}[]",:0123456789 -.etrufalsn\"#.utf8)
        var parsed = 0
        for round in 0..<20_000 {
            var bytes = Array(Self.messages[round % Self.messages.count].utf8)
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let k = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes.remove(at: k)
                case 1: bytes.insert(alphabet.randomElement(using: &rng)!, at: k)
                default: bytes[k] = alphabet.randomElement(using: &rng)!
                }
                if bytes.isEmpty { bytes = [0x7B] }
            }
            guard let d = document(bytes) else {
                #expect(tree(bytes) == nil, "the tree parsed what the document refused: \(String(decoding: bytes, as: UTF8.self))")
                continue
            }
            parsed += 1
            let t = tree(bytes)
            #expect(t?.event == d.event && t?.batch == d.batch, "\(String(decoding: bytes, as: UTF8.self))")
        }
        #expect(parsed > 100, "the damage should leave some lines valid")
    }

    /// Every event of a session recorded from an old VMM (`Fixtures/recording-7803fbf`), sent as the VMM sends
    /// it and cut anywhere, reads through the client's path as the recording's tree reads.
    @Test func theRecordedSessionReadsTheSameThroughTheClientsPath() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../InspectorTests/Fixtures/recording-7803fbf.jsonl.gz").standardized.path
        let recording = try Recording.read(path: path)
        var expected: [Event] = []
        var stream: [UInt8] = []
        for (_, entry) in recording.entries {
            guard case .event(let e) = entry else { continue }
            expected.append(try #require(Event(message: e)))
            e.write(to: &stream)
            stream.append(0x0A)
        }
        #expect(expected.count > 100)
        #expect(expected.contains { if case .memoryFault(let b) = $0 { b.records.count > 0 } else { false } })
        for cut in [1, 5, 64, 4096, stream.count] {
            var f = Framer(parsesLines: true)
            var events: [Event] = []
            var i = 0
            while i < stream.count {
                for frame in f.feed(stream[i..<min(i + cut, stream.count)]) {
                    guard case .parsed(let d) = frame else { Issue.record("a message not parsed: \(frame)"); continue }
                    events.append(FaultBatch(event: d).map { .memoryFault($0) } ?? Event(message: d) ?? .other(name: "?", data: nil))
                }
                i += cut
            }
            #expect(events == expected, "cut every \(cut) bytes")
        }
    }

    /// A framer that parses lines gives the same messages, in the same order, however the stream is cut; the
    /// lines it parsed are handed out parsed, the others as bytes.
    @Test func framerParsesLinesWhereverTheStreamIsCut() {
        let reply = #"{"return":{"name":"x"},"id":"a"}"#
        let other = #"{"event":"MEMSLOTS_CHANGED","data":{"generation":2}}"#
        let damaged = #"{"event":"MEMORY_FAULT","data":{"records":[{"seq":1,"seq":2}]}}"#  // refused: a repeated member
        let pretty = "{\n  \"return\": {}\n}"
        let stream = Array((Self.vmmLine + "\n" + reply + "\r\n" + Self.messages[1] + "\n" + other + damaged + "\n"
            + pretty + "\n" + Self.vmmLine + "\n").utf8)

        func describe(_ frames: [Framer.Frame]) -> [String] {
            frames.map { f in
                switch f {
                case .parsed(let d): d.json.serialized
                case .message(var m): (try? JSON.parse(bytes: &m))?.serialized ?? "invalid " + String(decoding: m, as: UTF8.self)
                case .tooLong: "<too long>"
                }
            }
        }
        var plain = Framer()
        let expected = describe(plain.feed(stream))
        #expect(expected.count == 7)
        for cut in [1, 2, 7, 64, 333, stream.count] {
            var f = Framer(parsesLines: true)
            var frames: [Framer.Frame] = []
            var i = 0
            while i < stream.count {
                frames += f.feed(stream[i..<min(i + cut, stream.count)])
                i += cut
            }
            #expect(describe(frames) == expected, "cut every \(cut) bytes")
            let parsed = frames.filter { if case .parsed = $0 { true } else { false } }.count
            #expect(parsed == 6, "every message but the damaged one is handed out parsed (cut every \(cut))")
            #expect(f.pendingBytes == 0)
        }
    }

    /// A peer that ends a message without a newline (as QEMU's Python client does) is not kept waiting: a
    /// message whose last byte so far closes it is framed byte by byte. A cut after a `}` inside a line costs
    /// only that line's scan.
    @Test func aMessageWithoutItsNewlineIsStillFramed() throws {
        var f = Framer(parsesLines: true)
        #expect(f.feed(Array(#"{"return":{}}"#.utf8)) == [.parsed(try JSONDocument(parsing: Array(#"{"return":{}}"#.utf8)))])
        #expect(f.feed(Array(#"{"a":{"b":1}"#.utf8)).isEmpty)
        #expect(f.feed(Array(#","c":2}"#.utf8)) == [.parsed(try JSONDocument(parsing: Array(#"{"a":{"b":1},"c":2}"#.utf8)))])
        #expect(f.feed(Array(#"{"a":"#.utf8)).isEmpty, "waits for the rest")
        let frames = f.feed(Array("[1]}\n".utf8))
        guard case .parsed(let d)? = frames.first, frames.count == 1 else { Issue.record("\(frames)"); return }
        #expect(d.json == .object([("a", .array([.int(1)]))]))
    }

    @Test func aLineLongerThanTheLimitIsRefusedAsBefore() {
        var f = Framer(maxMessage: 64, parsesLines: true)
        let frames = f.feed(Array((Self.vmmLine + "\n{\"ok\":1}\n").utf8))
        #expect(frames.count == 2)
        #expect(frames.first == .tooLong)
        guard case .parsed(let d)? = frames.last else { Issue.record("\(frames)"); return }
        #expect(d.json == .object([("ok", .int(1))]))
    }
}
