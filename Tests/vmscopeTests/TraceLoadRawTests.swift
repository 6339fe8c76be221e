import Foundation
import HostTracing
@testable import Schema
import Testing

/// `vmscope trace --load-raw FILE --paired-only`: a raw file (a ticket's `--save-raw`) is paired as a live trace is,
/// by the same pairing. (It printed nothing before: the paired output was only made for a live trace.) No root or
/// tracefs needed.
@Suite struct TraceLoadRawTests {
    static let recording = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../HostTracingTests/Fixtures/kernel-7.3-lab-vmm-conversions.jsonl").standardized.path

    @Test func aRawFileIsPairedAsALiveTraceIs() throws {
        let r = try Binary.run(["trace", "--load-raw", Self.recording, "--paired-only", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let events = try lines.map { line in try #require(JSON.parse(line)["event"]?.stringValue, "\(line)") }
        // What the library's pairing gives on the same records, decoded here.
        let file = try RawTraceRecording(contentsOf: Self.recording)
        var pairing = TracePairing(tracesConversions: TracePairing.tracesConversions(file.layouts), complete: false)
        var paired: [TracePairing.Paired] = []
        for e in file.decoded() { pairing.apply(e, into: &paired) }
        let expected = paired.map { $0.json.serialized } + pairing.pendingRequests.map { $0.json.serialized } + [pairing.mapJSON()?.serialized ?? "-"]
        #expect(events.filter { $0 == "conversion" }.count > 10 && events.contains("memory-fault"), "\(Set(events))")
        #expect(events.last == "attribute-map")
        #expect(lines == expected)
        // Text too: a line a record, the map last.
        let text = try Binary.run(["trace", "--load-raw", Self.recording, "--paired-only"])
        #expect(text.stdout.split(separator: "\n").count == lines.count && text.stdout.split(separator: "\n").last?.hasPrefix("attribute map") == true,
                "\(text.stdout.suffix(300))")
    }
}
