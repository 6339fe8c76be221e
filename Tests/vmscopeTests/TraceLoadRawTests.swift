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

    /// A recording of a trace whose events the kernel paired (`KernelPairing`, the lab's 7.3; saved with `--save-raw`,
    /// its first 1,285 records) is paired as that trace was: its layouts name the kernel's synthetic events, so each
    /// MEMORY_FAULT exit takes the paired fault after it (the records say the kernel paired them, and when the page
    /// fault was), and each traced conversion takes its result from the kernel's `sys_exit_ioctl` for it.
    @Test func aRecordingOfKernelPairedEventsIsPairedAsItsTraceWas() throws {
        let path = URL(fileURLWithPath: Self.recording).deletingLastPathComponent().appendingPathComponent("kernel-7.3-lab-kernel-paired-faults.jsonl").path
        let r = try Binary.run(["trace", "--load-raw", path, "--paired-only", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let records = try r.stdout.split(separator: "\n").map { try JSON.parse(String($0)) }
        let faults = records.filter { $0["event"]?.stringValue == "memory-fault" }
        #expect(faults.count >= 16)
        #expect(faults.allSatisfy { $0["paired-in"]?.stringValue == "kernel" && $0["gpa"]?.uint64Value != nil && $0["errno"]?.intValue == -14 },
                "\(faults.prefix(3).map(\.serialized))")
        // Each at its exit's time (a MEMORY_FAULT exit of the same thread in the file has it), its page fault before it.
        let file = try RawTraceRecording(contentsOf: path)
        #expect(TracePairing.faultsPairedInKernel(file.layouts) && TracePairing.tracesConversions(file.layouts))
        let exits = Set(file.decoded().filter(\.isMemoryFaultExit).map { "\($0.tid)@\($0.timeNs)" })
        #expect(faults.allSatisfy { exits.contains("\($0["tid"]?.intValue ?? -1)@\($0["time-ns"]?.uint64Value ?? 0)") })
        #expect(faults.allSatisfy { f in (f["page-fault-ns"]?.uint64Value).map { $0 > 0 && $0 < f["time-ns"]?.uint64Value ?? 0 } ?? false })
        let conversions = records.filter { $0["event"]?.stringValue == "conversion" }
        #expect(conversions.count > 50 && conversions.allSatisfy { $0["result"]?.stringValue == "applied" }, "\(conversions.prefix(2).map(\.serialized))")
    }
}
