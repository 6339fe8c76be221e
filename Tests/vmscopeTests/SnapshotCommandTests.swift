@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing

@Suite(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct SnapshotCommandTests {
    @Test(.enabled(if: pythonJSONSchema, "python3's jsonschema is not installed (.ci/run installs python3-jsonschema)"))
    func snapshotJSONValidatesAndAgreesWithTheVMM() throws {
        let vmm = try RunningVMM(["--allow-mutations"])
        defer { vmm.stop() }
        // A conversion first, so the runs are not one block.
        _ = try Binary.run(["ctl", vmm.socket, "set-memory-attributes", #"{"gpa": 33554432, "size": 1048576, "private": false}"#])
        // Some faults to capture: the guest's first ones take a moment, longer under load.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let q = try Binary.run(["ctl", vmm.socket, "query-memory-faults", #"{"limit": 0}"#])
            if (try? parseJSON(q.stdout))?["total"]?.uint64Value ?? 0 >= 5 { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        let r = try Binary.run(["snapshot", vmm.socket, "--json", "--faults", "50"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try schemaComplaint(r.stdout) == nil)
        let s = try parseJSON(r.stdout)
        #expect(s["format"] == .string("vmscope-snapshot") && s["version"] == .int(1))
        #expect(s["vm"]?["attribute-engine"] == .string("vmm") && s["vm"]?["ram-size"]?.uint64Value == 64 << 20)
        let runs = try #require(s["attributes"]?["runs"]?.arrayValue)
        #expect(runs.contains { $0["gpa"]?.uint64Value == 32 << 20 && $0["size"]?.uint64Value == 1 << 20 && $0["private"] == .bool(false) },
                "\(runs)")
        // The runs cover RAM exactly, in order; every memslot's pages add up to its size (the layout matches
        // the runs, since it is one capture).
        var end: UInt64 = 0
        for run in runs {
            #expect(run["gpa"]?.uint64Value == end)
            end += run["size"]?.uint64Value ?? 0
        }
        #expect(end == 64 << 20)
        for slot in s["memslots"]?.arrayValue ?? [] where slot["view"] != .string("plain") {
            let pages = (slot["private-pages"]?.uint64Value ?? 0) + (slot["shared-pages"]?.uint64Value ?? 0)
            #expect(pages * 4096 == slot["size"]?.uint64Value, "\(slot)")
        }
        let faults = try #require(s["faults"]?["records"]?.arrayValue)
        #expect(!faults.isEmpty && faults.count <= 50)
        let seqs = faults.compactMap { $0["seq"]?.uint64Value }
        #expect(seqs == Array(seqs.sorted()) && Set(seqs).count == seqs.count, "newest last, no repeats")
        let vcpus = s["vcpus"]?.arrayValue ?? []
        #expect(!vcpus.isEmpty && vcpus.count == s["vm"]?["vcpus"]?.intValue && vcpus.allSatisfy { $0["regs"]?["rip"] != nil })

        // The schema is not a rubber stamp: a snapshot with a record missing `seq` fails it.
        let broken = r.stdout.replacingOccurrences(of: "\"seq\":", with: "\"sequence\":")
        #expect(try schemaComplaint(broken)?.contains("seq") == true)

        // --text: the four panes, as the inspector draws them.
        let t = try Binary.run(["snapshot", vmm.socket, "--text"])
        #expect(t.status == 0)
        for title in ["1 GFN map", "2 Faults", "3 Memslots", "4 vCPUs", "engine vmm", privateBackingMarker, "rip 0x"] {
            #expect(t.stdout.contains(title), "no \(title) in --text:\n\(t.stdout)")
        }
    }

    @Test func badInputIsAClearErrorAndWritesNothing() throws {
        let missing = NSTemporaryDirectory() + "vmscope-no-such-\(getpid()).sock"
        let r = try Binary.run(["snapshot", missing])
        #expect(r.status == 2 && r.stderr.contains(missing) && r.stdout.isEmpty, "\(r)")
        let d = try Binary.run(["record", missing, "-o", NSTemporaryDirectory() + "x.gz", "--duration", "soon"])
        #expect(d.status != 0 && d.stderr.contains("not a duration"), "\(d)")
        let out = NSTemporaryDirectory() + "vmscope-rec-\(getpid())-never.jsonl.gz"
        let n = try Binary.run(["record", missing, "-o", out, "--duration", "1"])
        #expect(n.status == 2 && !FileManager.default.fileExists(atPath: out), "\(n)")
        let notRecording = NSTemporaryDirectory() + "vmscope-not-a-recording-\(getpid())"
        try "hello\n".write(toFile: notRecording, atomically: true, encoding: .utf8)
        defer { unlink(notRecording) }
        let p = try Binary.run(["replay", notRecording, "--dump-at", "0"])
        #expect(p.status == 2 && p.stderr.contains("not a gzip file") && p.stdout.isEmpty, "\(p)")
    }
}
