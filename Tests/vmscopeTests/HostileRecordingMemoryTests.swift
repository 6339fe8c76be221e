import Foundation
import ControlProtocol
import Inspector
import ProcessSupport
import Testing

/// Small files, large memory (issue 28, class 3): a recording whose line is a long array of numbers inflates to at
/// most 256 MiB, but as a JSON tree it took replay to 3.25 GB. Replay now holds at most `Recording.maxValues`
/// values, and says where it stopped.
@Suite struct HostileRecordingMemoryTests {
    /// A recording: a real header, then one event line holding `zeros` numbers.
    static func numericArrayRecording(zeros: Int) throws -> String {
        let dir = NSTemporaryDirectory() + "vmscope-hostile-file-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let headerOnly = dir + "/header.jsonl.gz"
        let w = try RecordingWriter(path: headerOnly, header: Recording.Header(startedAtWallNs: 1, startedAtMonotonicNs: 1,
                                                                              socket: "/x", greeting: QMP.greeting, recorder: "t"))
        try w.finish(reason: "stopped", monotonicNs: 2)
        let (plain, _) = GzipReader.inflateAll(Array(try Data(contentsOf: URL(fileURLWithPath: headerOnly))))
        let header = plain.split(separator: 0x0A).first.map(Array.init) ?? []
        let path = dir + "/numbers.jsonl.gz"
        let g = try GzipWriter(path: path)
        try g.write(header + [0x0A] + Array(#"{"t":2,"event":{"event":"X","data":{"z":["#.utf8))
        let chunk = [UInt8](repeating: 0, count: 1 << 20).enumerated().map { $0.offset % 2 == 0 ? UInt8(ascii: "0") : UInt8(ascii: ",") }
        for _ in 0..<(zeros / (chunk.count / 2)) { try g.write(chunk) }
        try g.write(Array("0]}}}\n".utf8))
        try g.finish()
        return path
    }

    @Test func aLongNumericArrayStaysWithinTheReplaysBound() throws {
        let path = try Self.numericArrayRecording(zeros: 100_000_000)
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path) }
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        #expect(size < 1 << 20, "a small file: \(size) bytes")
        let out = NSTemporaryDirectory() + "vmscope-hostile-out-\(getpid()).txt"
        defer { unlink(out); unlink(out + ".err") }
        let p = try ChildProcess([Binary.url.path, "replay", path, "--dump-at", "end", "--text"], redirects: .init(stdout: out, stderr: out + ".err"))
        let peak = PeakRSS(pid: p.pid)
        let status = p.wait(seconds: 300) ?? -1
        let rss = peak.stop()
        let text = ((try? String(contentsOfFile: out + ".err", encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
        print("HostileRecordingMemoryTests: replay of a \(size)-byte file of 100,000,000 numbers: exit \(status), peak RSS \(rss >> 20) MiB")
        #expect(rss < 1 << 30, "peak RSS \(rss >> 20) MiB; the stated bound is 1 GiB: \(text.prefix(500))")
        #expect(text.contains("JSON values"), "the replay says where and why it stopped: \(text.prefix(1000))")
    }
}
