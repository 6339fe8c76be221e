@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing

@Suite(.serialized, .enabled(if: qemuAvailable, "qemu-system-x86_64 is not installed (.ci/run installs qemu-system-x86)"))
struct QEMUSnapshotTests {
    @Test func aStockQEMUSnapshotsWhatItOffersAndIsRecorded() throws {
        let qemu = try startQEMU(qemuConfigurations[0].arguments)
        defer { qemu.stop() }
        // The firmware remaps low memory as it boots: wait until it is done, then pause so both sides read one map
        // (and the recording below, running, sees the same).
        let checker = try ControlClient(path: qemu.qmpSockets[1])
        defer { checker.close() }
        let settled = try settledKVMRanges(checker)
        _ = try checker.execute("stop")
        let r = try Binary.run(["snapshot", qemu.qmpSockets[0], "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        if pythonJSONSchema { #expect(try schemaComplaint(r.stdout) == nil) }
        let s = try parseJSON(r.stdout)
        #expect(s["peer"]?.stringValue?.hasPrefix("QEMU ") == true && s["vm"]?["qemu-version"] == s["peer"])
        // Memslots as QEMU's own flat view has them (the checker reads it on the second monitor).
        let mtree = try Independent.kvmRanges(try hmp(checker, "info mtree -f"))
        func ranges(_ view: JSON) -> [String] {
            (view["memslots"]?.arrayValue ?? []).map {
                "\(String($0["gpa"]?.uint64Value ?? 0, radix: 16))+\(String($0["size"]?.uint64Value ?? 0, radix: 16))"
            }
        }
        let slots = ranges(s)
        #expect(!slots.isEmpty && slots == mtree && mtree == settled, "snapshot \(slots) vs mtree \(mtree), settled \(settled)")
        #expect(s["memslots"]?.arrayValue?.allSatisfy { $0["slot"] == .null } == true, "QMP gives no slot numbers")
        #expect((s["vcpus"]?.arrayValue?.count ?? 0) == qemuConfigurations[0].vcpus)
        // What QEMU has no source for is null, with the reason.
        #expect(s["attributes"] == .null && s["faults"] == .null)
        #expect(s["unavailable"]?["map"]?.stringValue?.contains("private/shared map unavailable") == true)
        // What QEMU allows: no conversions over QMP (it said mutations-allowed: true).
        #expect(s["vm"]?["mutations-allowed"]?.boolValue == false, "\(s["vm"] ?? .null)")

        let out = NSTemporaryDirectory() + "vmscope-qemu-rec-\(getpid()).jsonl.gz"
        defer { unlink(out) }
        // Recorded (issue 27, item 14: it was refused): what the inspector sees of it, replayed to the same views.
        _ = try checker.execute("cont")
        let rec = try Binary.run(["record", qemu.qmpSockets[0], "-o", out, "--duration", "3"])
        #expect(rec.status == 0 && rec.stderr.contains("recording stock QEMU"), "\(rec)")
        let replayed = try Binary.run(["replay", out, "--dump-at", "end", "--json"])
        #expect(replayed.status == 0, "\(replayed.stderr)")
        let r2 = try parseJSON(replayed.stdout)
        #expect(r2["vm"]?["qemu-version"]?.stringValue?.hasPrefix("QEMU") == true, "\(r2["vm"] ?? .null)")
        #expect(r2["vm"]?["run-state"]?.stringValue == "running")
        #expect((r2["vcpus"]?.arrayValue?.count ?? 0) == qemuConfigurations[0].vcpus)
        let recorded = ranges(r2)
        #expect(recorded == slots, "recorded \(recorded), snapshot \(slots)")
    }
}
