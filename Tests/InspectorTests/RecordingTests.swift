import ControlProtocol
import Foundation
import Inspector
import Testing

/// Recording files: written as they happen, read as far as they are sound.
struct RecordingTests {
    static let greeting = try! JSON.parse(#"{"QMP":{"version":{"qemu":{"major":0,"minor":1,"micro":0},"package":"vmscope 0.1.0"},"capabilities":[]},"vmscope":{"protocol":1}}"#)

    static func temporaryPath(_ name: String) -> String {
        NSTemporaryDirectory() + "vmscope-rec-\(getpid())-\(UInt32.random(in: 0...UInt32.max))-\(name)"
    }

    /// A query-snapshot reply: 1 MiB of RAM, all private, one memslot, `faults` records.
    static func snapshotReply(faults: ClosedRange<UInt64>) -> JSON {
        .object([
            ("vm", .object([("name", .string("t")), ("attribute-engine", .string("vmm")), ("ram-size", .u(1 << 20)),
                            ("vcpus", .i(1)), ("fault-policy", .string("convert"))])),
            ("memslots", .array([.object([("slot", .i(0)), ("gpa", .u(0)), ("size", .u(1 << 20)), ("view", .string("private")),
                                          ("backing", .string("guest_memfd"))])])),
            ("attributes", .object([("runs", .array([.object([("gpa", .u(0)), ("size", .u(1 << 20)), ("private", .bool(true))])]))])),
            ("faults", .object([("records", .array(faults.map { fault($0).json }))])),
            ("vcpus", .array([.object([("index", .i(0)), ("state", .string("running"))])])),
        ])
    }

    static func fault(_ seq: UInt64) -> FaultRecord {
        FaultRecord(seq: seq, timeNs: seq * 1000, vcpu: 0, gpa: (seq % 256) * 4096, flags: 8, access: "write")
    }

    static func faultEvent(_ seqs: ClosedRange<UInt64>) -> JSON {
        Event.memoryFault(FaultBatch(records: seqs.map(fault), dropped: 0)).message()
    }

    /// A finished recording: a snapshot with faults 1-10, an event with 6-15 (6-10 repeat the snapshot's: what a
    /// server had queued before the snapshot), then a batch of 5 faults each second for 4 s, a quiet 3 s, and 3 s
    /// more; at 4 s, a conversion of the first 64 KiB to shared with the recorder's follow-up query.
    static func writeSample(_ path: String, finish: Bool = true) throws -> Recording.Header {
        let header = Recording.Header(startedAtWallNs: 1_800_000_000_000_000_000, startedAtMonotonicNs: 1_000_000_000,
                                      socket: "/x.sock", greeting: greeting, recorder: "test")
        let w = try RecordingWriter(path: path, header: header)
        let start = header.startedAtMonotonicNs
        try w.append(.snapshot(snapshotReply(faults: 1...10)), monotonicNs: start + 1_000_000)
        try w.append(.event(faultEvent(6...15)), monotonicNs: start + 2_000_000)
        for s in [1, 2, 3, 4, 7, 8, 9] as [UInt64] {
            let first = 15 + (s - 1) * 5 + 1
            try w.append(.event(faultEvent(first...(first + 4))), monotonicNs: start + s * 1_000_000_000)
            if s == 4 {
                try w.append(.event(try JSON.parse(#"{"event":"MEMORY_ATTRIBUTES_CHANGED","data":{"gpa":0,"size":65536,"private":false,"cause":"command","vcpu":null}}"#)),
                             monotonicNs: start + s * 1_000_000_000 + 1)
                try w.append(.reply(command: "query-memory-attributes", value: try JSON.parse(
                    #"{"runs":[{"gpa":0,"size":65536,"private":false},{"gpa":65536,"size":983040,"private":true}]}"#)),
                             monotonicNs: start + s * 1_000_000_000 + 2)
            }
        }
        if finish { try w.finish(reason: "duration reached", monotonicNs: start + 10_000_000_000) } else { try w.flush() }
        return header
    }

    @Test func aFinishedRecordingReadsWholeAndReplaysToAnyTime() throws {
        let path = Self.temporaryPath("ok.jsonl.gz")
        defer { unlink(path) }
        _ = try Self.writeSample(path)
        let r = try Recording.read(path: path)
        #expect(r.damage == nil)
        #expect(r.endReason == "duration reached")
        #expect(r.entries.count == 1 + 1 + 7 + 2 + 1)
        #expect(r.durationNs == 10_000_000_000)

        var replay = Replay(r, file: path)
        replay.seek(to: 3_500_000_000)
        // The snapshot's 10, the event's 11-15 (6-10 applied once), then 5 a second for 3 s.
        #expect(replay.model.visibleFaults.map(\.seq) == Array(1...30))
        #expect(replay.model.runs == [RunRow(gpa: 0, size: 1 << 20, isPrivate: true)])
        replay.seek(to: 4_500_000_000)
        #expect(replay.model.runs.first == RunRow(gpa: 0, size: 65536, isPrivate: false))
        #expect(replay.model.memslots.first?.sharedPages == 16)
        // Back in time: the model is rebuilt, not left at the later state.
        replay.seek(to: 3_500_000_000)
        #expect(replay.model.visibleFaults.count == 30 && replay.model.runs.count == 1)
        // Bursts: a batch a second is one burst; after 3 s of quiet, the next batch starts another.
        #expect(replay.burstsNs == [2_000_000, 7_000_000_000])
        replay.seek(to: .max)
        #expect(replay.atEnd && replay.positionNs == r.durationNs)
        #expect(replay.model.connection == .connected("vmscope 0.1.0, recorded"), "a recording that ran its course ends connected")
    }

    @Test func damageStopsTheReplayThereAndSaysWhere() throws {
        let path = Self.temporaryPath("damaged.jsonl.gz")
        defer { unlink(path) }
        _ = try Self.writeSample(path)
        let whole = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let full = try Recording.parse(whole)
        func prefixMatches(_ r: Recording) -> Bool {
            r.entries.count < full.entries.count && zip(r.entries, full.entries).allSatisfy { $0.t == $1.t && $0.entry == $1.entry }
        }

        // Cut short (a recorder killed while writing, a copy interrupted): every cut gives a prefix and a reason.
        for cut in stride(from: whole.count / 5, to: whole.count - 1, by: max(1, whole.count / 7)) {
            let r = try Recording.parse(Array(whole[0..<cut]))
            #expect(prefixMatches(r), "cut at \(cut): \(r.entries.count) entries")
            let damage = try #require(r.damage, "cut at \(cut) went unnoticed")
            #expect(damage.contains("not finished") || damage.contains("incomplete") || damage.contains("no end entry"), "\(damage)")
            #expect(damage.contains("entries read, up to"), "\(damage)")
        }

        // A byte flipped anywhere after the header: the entries before the damage, then a clear stop (zlib's
        // CRC catches what still inflates).
        for at in stride(from: whole.count / 4, to: whole.count - 8, by: max(1, whole.count / 9)) {
            var corrupt = whole
            corrupt[at] ^= 0x5A
            let c = try Recording.parse(corrupt)
            #expect(c.damage != nil, "a flipped byte at \(at) went unnoticed")
            #expect(zip(c.entries, full.entries).allSatisfy { $0.t == $1.t && $0.entry == $1.entry }
                    || c.damage?.contains("damaged") == true,
                    "flip at \(at): \(c.entries.count) of \(full.entries.count) entries, \(c.damage ?? "")")
        }

        // Trailing garbage after a finished file is said, and costs no entry.
        let t = try Recording.parse(whole + [1, 2, 3])
        #expect(t.entries.count == full.entries.count && t.damage?.contains("after the end of the gzip stream") == true)
    }

    @Test func anUnfinishedRecordingReplaysUpToItsLastFlush() throws {
        let path = Self.temporaryPath("unfinished.jsonl.gz")
        defer { unlink(path) }
        _ = try Self.writeSample(path, finish: false)   // flushed, never finished: what SIGKILL leaves
        let r = try Recording.read(path: path)
        #expect(r.entries.count == 1 + 1 + 7 + 2)
        #expect(r.damage?.contains("not finished") == true, "\(r.damage ?? "nil")")
    }

    @Test func whatIsNotARecordingOrIsNewerIsRefused() throws {
        func refusal(_ bytes: [UInt8]) -> String? {
            do { _ = try Recording.parse(bytes); return nil } catch { return error.description }
        }
        #expect(refusal([])?.contains("empty") == true)
        #expect(refusal(Array("{\"t\":0}\n".utf8))?.contains("not a gzip file") == true)

        // Version 3 (the newest this code reads is 2), written with this code's own writer so only the version differs.
        let path = Self.temporaryPath("v2.jsonl.gz")
        defer { unlink(path) }
        let w = try RecordingWriter(path: path, header: Recording.Header(startedAtWallNs: 1, startedAtMonotonicNs: 1,
                                                                         socket: "/x", greeting: Self.greeting, recorder: "t"))
        try w.finish(reason: "stopped", monotonicNs: 2)
        let (plain, _) = GzipReader.inflateAll(Array(try Data(contentsOf: URL(fileURLWithPath: path))))
        let text = String(decoding: plain, as: UTF8.self).replacingOccurrences(of: "\"version\":1", with: "\"version\":3")
        let v2 = Self.temporaryPath("v2b.jsonl.gz")
        defer { unlink(v2) }
        let g = try GzipWriter(path: v2)
        try g.write(Array(text.utf8))
        try g.finish()
        let why = try #require(refusal(Array(try Data(contentsOf: URL(fileURLWithPath: v2)))))
        #expect(why.contains("format version 3") && why.contains("reads version 2"), "\(why)")

        // A gzip file of something else.
        let other = Self.temporaryPath("other.gz")
        defer { unlink(other) }
        let o = try GzipWriter(path: other)
        try o.write(Array("{\"hello\":1}\n".utf8))
        try o.finish()
        #expect(refusal(Array(try Data(contentsOf: URL(fileURLWithPath: other))))?.contains("not a vmscope recording header") == true)
    }

    @Test func aFullDiskIsAClearError() throws {
        // /dev/full refuses every write with ENOSPC.
        let header = Recording.Header(startedAtWallNs: 1, startedAtMonotonicNs: 1, socket: "/x", greeting: Self.greeting, recorder: "t")
        #expect(throws: RecordingError.self) { _ = try RecordingWriter(path: "/dev/full", header: header) }
        do { _ = try RecordingWriter(path: "/dev/full", header: header) } catch {
            #expect(error.description.contains("No space left on device"), "\(error)")
        }
    }
}
