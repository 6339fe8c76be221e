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

    /// Expects each record written to be its tree, up to the first that is not; the records' "event" names.
    static func writtenAreTrees(_ records: [some JSONObjectRecord]) -> Set<String> {
        var kinds: Set<String> = []
        for r in records {
            var written: [UInt8] = []
            r.writeJSON(to: &written)
            let tree = r.json
            #expect(String(decoding: written, as: UTF8.self) == tree.serialized)
            kinds.insert(tree["event"]?.stringValue ?? "?")
            if String(decoding: written, as: UTF8.self) != tree.serialized { break }
        }
        return kinds
    }
}
