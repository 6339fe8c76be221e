import Foundation
@testable import Schema
import Testing
@testable import HostTracing

/// `vmscope trace --json` writes each event straight into its output (`writeJSON`); `json` makes the same event as
/// a tree. Both must give the same bytes, for every kind of event the recordings hold (6.18 under PVM, 6.12 and 7.3
/// in the lab: exits, MMIO, page faults, hardware exits, hypercalls, conversions and their ioctls).
@Suite struct EventJSONWritingTests {
    @Test(arguments: ["kernel-6.18-pvm-vmm-burst.jsonl", "kernel-6.12-lab-svm-qemu-boot.jsonl", "kernel-7.3-lab-vmm-conversions.jsonl"])
    func writtenEventsAreTheirTrees(_ fixture: String) throws {
        let events = try RawTraceRecording(contentsOf: fixturePath(fixture)).decoded()
        #expect(events.count > 500)
        let kinds = Self.writtenAreTrees(events)
        #expect(kinds.count >= 2, "\(kinds)")
    }

    /// `vmscope trace --paired-only --json` writes its records the same way: each paired record of a 7.3 recording
    /// (conversions, their steps, memory faults) written is its tree.
    @Test func writtenPairedRecordsAreTheirTrees() throws {
        let events = try RawTraceRecording(contentsOf: fixturePath("kernel-7.3-lab-vmm-conversions.jsonl")).decoded()
        var pairing = TracePairing(tracesConversions: true, complete: false)
        var paired: [TracePairing.Paired] = []
        pairing.apply(events, into: &paired)
        let kinds = Self.writtenAreTrees(paired)
        #expect(kinds.isSuperset(of: ["conversion", "conversion-steps", "memory-fault"]), "\(kinds)")
    }

    /// `vmscope trace --json` writes every read's events into one `JSONOutput`, kept from one read to the next: written
    /// into one that starts small (so it grows many times), emptied and written again, each line reads back (through
    /// the parser, not the writer) as its event's tree.
    @Test func linesWrittenIntoOneOutputReadBackAsTheirEvents() throws {
        let events = try RawTraceRecording(contentsOf: fixturePath("kernel-7.3-lab-vmm-conversions.jsonl")).decoded()
        let out = JSONOutput(capacity: 1)
        for round in 0..<2 {
            out.removeAll()
            TraceEvent.writeJSONLines(events, shownOnly: nil, to: out)
            let lines = Array(out.bytes).split(separator: 0x0A, omittingEmptySubsequences: false)
            #expect(lines.count == events.count + 1 && lines.last?.isEmpty == true, "round \(round)")
            for (line, e) in zip(lines, events) {
                let read = try JSON.parse(String(decoding: line, as: UTF8.self))
                #expect(read == e.json, "round \(round): \(String(decoding: line, as: UTF8.self))")
                if read != e.json { break }
            }
        }
        // --events: only the events named.
        out.removeAll()
        TraceEvent.writeJSONLines(events, shownOnly: ["sys_exit_ioctl"], to: out)
        let shown = Array(out.bytes).split(separator: 0x0A).map { String(decoding: $0, as: UTF8.self) }
        #expect(shown.count == events.filter { $0.name == "sys_exit_ioctl" }.count && !shown.isEmpty)
        #expect(shown.allSatisfy { $0.hasPrefix(#"{"event":"sys_exit_ioctl""#) })
    }

    /// Expects each record written to be its tree, up to the first that is not; the records' "event" names.
    static func writtenAreTrees(_ records: [some JSONObjectRecord]) -> Set<String> {
        var kinds: Set<String> = []
        for r in records {
            let out = JSONOutput(capacity: 256)
            r.writeJSON(to: out)
            let written = Array(out.bytes)
            let tree = r.json
            #expect(String(decoding: written, as: UTF8.self) == tree.serialized)
            kinds.insert(tree["event"]?.stringValue ?? "?")
            if String(decoding: written, as: UTF8.self) != tree.serialized { break }
        }
        return kinds
    }
}
