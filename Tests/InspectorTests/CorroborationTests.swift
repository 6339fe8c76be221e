import Inspector
import Schema
import Testing

/// A kernel tracepoint event marks the VMM's own record of the same exit (one row, both sources), and nothing else.
struct CorroborationTests {
    func record(_ seq: UInt64, vcpu: Int, gpa: UInt64, t: UInt64, exit: FaultExit = .mmio, source: FaultSource = .vmm) -> FaultRecord {
        FaultRecord(seq: seq, timeNs: t, vcpu: vcpu, gpa: gpa, flags: 0, isPrivate: true, access: .read, source: source,
                    exit: exit, attribute: .shared, slot: 0, action: .converted)
    }

    func model(_ records: [FaultRecord]) -> InspectorModel {
        var m = InspectorModel()
        m.apply(faults: FaultBatch(records: records, dropped: 0), nowNs: 1)
        return m
    }

    @Test func anEventMarksTheRecordOfTheSameExitOnly() {
        let ms: UInt64 = 1_000_000
        var m = model([
            record(1, vcpu: 0, gpa: 0x10_0000, t: 100 * ms),
            record(2, vcpu: 1, gpa: 0x10_0000, t: 101 * ms),           // same page, other vCPU
            record(3, vcpu: 0, gpa: 0x10_1000, t: 102 * ms),           // other page
            record(4, vcpu: 0, gpa: 0x10_0000, t: 500 * ms),           // same page and vCPU, much later
            record(5, vcpu: 0, gpa: 0x20_0000, t: 600 * ms, exit: .memoryFault, source: .kernel),
        ])
        let left = m.corroborate([
            TracedExit(timeNs: 100 * ms - 30_000, vcpu: 0, gpa: 0x10_0008, exit: .mmio),   // kvm_mmio 30 µs before
            TracedExit(timeNs: 600 * ms - 50_000, vcpu: 0, gpa: nil, exit: .memoryFault),  // kvm_userspace_exit: no GPA
            TracedExit(timeNs: 300 * ms, vcpu: 0, gpa: 0x10_0000, exit: .mmio),            // nothing near in time
            TracedExit(timeNs: 102 * ms, vcpu: 2, gpa: 0x10_1000, exit: .mmio),            // no record of vCPU 2
        ])
        let traced = m.visibleFaults.map { $0.tracedNs != nil }
        #expect(traced == [true, false, false, false, true], "\(traced)")
        #expect(m.visibleFaults.first?.tracedNs == 100 * ms - 30_000)
        #expect(left.count == 2 && left.allSatisfy { $0.timeNs == 300 * ms || $0.vcpu == 2 }, "\(left)")
        #expect(m.faultsTraced == 2)
        // A second event of the same exit does not mark the record twice, nor its neighbour.
        let again = m.corroborate([TracedExit(timeNs: 100 * ms, vcpu: 0, gpa: 0x10_0000, exit: .mmio)])
        #expect(again.count == 1 && m.faultsTraced == 2)
    }

    @Test func theRowSaysBothSourcesAndTheDetailSaysWhichTracepoint() {
        var r = record(1, vcpu: 0, gpa: 0x10_0000, t: 2_000_000)
        #expect(!Renderer.faultLine(r, baseNs: 0).contains("+trace"))
        r.tracedNs = 1_990_000
        #expect(Renderer.faultLine(r, baseNs: 0).contains("vmm/MMIO+trace"), "\(Renderer.faultLine(r, baseNs: 0))")
        // Never on the wire: the record's JSON is what it was.
        #expect(!r.json.serialized.contains("trace"))
    }
}

extension CorroborationTests {
    /// A hostile peer's timestamps near the top of UInt64 neither trap nor match.
    @Test func timestampsNearMaxNeitherTrapNorMatch() {
        var m = model([record(1, vcpu: 0, gpa: 0x1000, t: .max - 5), record(2, vcpu: 0, gpa: 0x1000, t: .max)])
        let left = m.corroborate([TracedExit(timeNs: 1_000, vcpu: 0, gpa: 0x1000, exit: .mmio),
                                  TracedExit(timeNs: .max, vcpu: 0, gpa: 0x1000, exit: .mmio)], windowNs: .max)
        #expect(left.isEmpty, "both match (the window admits anything), no trap: \(left)")
        let left2 = m.corroborate([TracedExit(timeNs: .max - 1, vcpu: 0, gpa: 0x1000, exit: .mmio)])
        #expect(left2.count == 1, "every record is taken: \(left2)")
    }
}
