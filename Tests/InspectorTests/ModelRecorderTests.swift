import Foundation
import Schema
import Testing
@testable import Inspector

/// A stock QEMU's recording (issue 27, item 14): what the inspector saw, written by `ModelRecorder` and played by
/// `Replay`, gives the same views and every fault record.
struct ModelRecorderTests {
    static func qemuModel() -> InspectorModel {
        var m = InspectorModel()
        m.vm.name = "guest1"
        m.vm.pid = 4242
        m.vm.qemuVersion = "QEMU 7.2.22"
        m.vm.runState = "running"
        m.vm.accelerator = "kvm"
        m.vm.machine = "pc-i440fx-7.2"
        m.vm.arch = "x86_64"
        m.vm.vcpus = 2
        m.vm.ramSize = 64 << 20
        var slot = MemslotRow(Memslot(slot: 0, asID: 0, gpa: 0, size: 64 << 20, flags: 0, flagNames: [], view: .unknown("-"),
                                      backing: .unknown("ram"), guestMemfdOffset: nil, userspaceAddress: 0x7f00_0000_0000))
        slot.slotKnown = false
        slot.regionName = "pc.ram"
        m.memslots = [slot]
        m.apply(vcpus: [VCPURow(index: 0, threadID: 11, state: .known(.running), lastExit: "IO", exitCounts: [("IO", 5)],
                                registers: [("rip", 0xfff0)], stats: [("exits", 5)]),
                        VCPURow(index: 1, threadID: 12, state: .known(.halted), lastExit: "HLT")], intervalNs: 1)
        m.unavailable[.memslots] = nil
        return m
    }

    static func traced(_ seq: UInt64) -> FaultRecord {
        FaultRecord(seq: seq, timeNs: seq * 1000, vcpu: 0, gpa: 0xfee0_0000 + seq * 4, size: 4, flags: 0, isPrivate: false,
                    access: .write, source: .trace, exit: .mmio, attribute: .none, slot: nil, action: .reported)
    }

    @Test func aQEMURecordingReplaysToTheSameViewsAndEveryFault() throws {
        let path = NSTemporaryDirectory() + "vmscope-model-rec-\(getpid()).jsonl.gz"
        defer { unlink(path) }
        var m = Self.qemuModel()
        m.apply(faults: FaultBatch(records: (1...3).map(Self.traced), dropped: 0), nowNs: 1)
        let greeting = try JSON.parse(#"{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":22},"package":""},"capabilities":["oob"]}}"#)
        let r = try ModelRecorder(path: path, socket: "/tmp/q.sock", greeting: greeting, recorder: "test", model: m)
        // Records from before the recording are not in it; 200 new ones are, and a gap in their numbers is `dropped`.
        m.apply(faults: FaultBatch(records: (4...150).map(Self.traced) + (161...213).map(Self.traced), dropped: 0), nowNs: 2)
        m.vm.runState = "paused"
        r.viewIntervalNs = 0
        try r.observe(m, nowNs: HostClock.monotonicNs())
        try r.finish(reason: "stopped")

        let rec = try Recording.read(path: path)
        #expect(rec.header.version == 2 && rec.damage == nil, "\(rec.damage ?? "")")
        #expect(rec.entries.contains { if case .view = $0.entry { true } else { false } })
        var replay = Replay(rec, file: path)
        replay.seek(to: rec.durationNs)
        let got = replay.model
        #expect(got.visibleFaults.map(\.seq) == Array(4...150) + Array(161...213))
        #expect(got.faultsDropped == 10)
        #expect(got.visibleFaults.allSatisfy { $0.source == .known(.trace) })
        func views(_ m: InspectorModel) -> JSON {
            var j = Snapshot.json(m, faultLimit: 0, takenAtWallNs: 0, origin: .live)
            if case .object(let members) = j { j = .object(members.filter { !["faults", "peer"].contains($0.0) }) }
            return j
        }
        #expect(views(got) == views(m), "\(views(got).serialized)\n\(views(m).serialized)")
        #expect(got.vm.runState == "paused" && got.peerIsQEMU)
        #expect(got.heatMapNote?.contains("QEMU 7.2.22") == true)
    }

    /// A reader of version 1 refuses version 2 by name; this one reads both.
    @Test func versionTwoIsReadAndNamed() throws {
        #expect(Recording.version == 2)
    }
}
