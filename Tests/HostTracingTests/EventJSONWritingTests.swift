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
        var kinds: Set<String> = []
        for e in events {
            var written: [UInt8] = []
            e.writeJSON(to: &written)
            let tree = e.json.serialized
            #expect(String(decoding: written, as: UTF8.self) == tree)
            kinds.insert(e.name)
            if String(decoding: written, as: UTF8.self) != tree { break }
        }
        #expect(kinds.count >= 2, "\(kinds)")
    }
}
