@testable import Inspector
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
    /// The index costs a session nothing until a trace corroborates, and then a bounded amount per record: under a
    /// stream it is rebuilt at most once every `faultCapacity` / 2 records (it was every 4,096 once past 104,000
    /// records, each rebuild indexing all 100,000 kept: the decode benchmark fell from 2.1 to 0.1 million records/s).
    @Test func theIndexIsKeptOnlyForATraceAndRebuiltRarely() {
        var m = InspectorModel()
        func feed(_ n: Int, from: UInt64) {
            var seq = from
            for _ in 0..<(n / 1000) {
                let batch = (0..<1000).map { i -> FaultRecord in
                    seq += 1
                    return record(seq, vcpu: Int(seq % 2), gpa: 0x100000 + (seq % 4096) * 4096, t: seq * 1000)
                }
                m.apply(faults: FaultBatch(records: batch, dropped: 0), nowNs: 1)
            }
        }
        feed(20_000, from: 0)
        #expect(m.untraced.entries == 0 && m.untraced.lists.isEmpty, "no trace, no index")
        _ = m.corroborate([])
        #expect(m.untraced.entries == 2 * 20_000, "a trace begins: the kept records are indexed once")
        feed(300_000, from: 20_000)
        #expect(m.untraced.rebuilds <= 300_000 / (m.faultCapacity / 2) + 1, "\(m.untraced.rebuilds) rebuilds for 300,000 records")
        #expect(m.untraced.entries <= 3 * m.faultCapacity + 2 * 1000)
        // It still finds the newest record of a page.
        let newest = m.faults.last!
        let left = m.corroborate([TracedExit(timeNs: newest.timeNs, vcpu: newest.vcpu, gpa: newest.gpa, exit: .mmio)])
        #expect(left.isEmpty && m.faults.last?.tracedNs == newest.timeNs)
    }

    @Test func timestampsNearMaxNeitherTrapNorMatch() {
        var m = model([record(1, vcpu: 0, gpa: 0x1000, t: .max - 5), record(2, vcpu: 0, gpa: 0x1000, t: .max)])
        let left = m.corroborate([TracedExit(timeNs: 1_000, vcpu: 0, gpa: 0x1000, exit: .mmio),
                                  TracedExit(timeNs: .max, vcpu: 0, gpa: 0x1000, exit: .mmio)], windowNs: .max)
        #expect(left.isEmpty, "both match (the window admits anything), no trap: \(left)")
        let left2 = m.corroborate([TracedExit(timeNs: .max - 1, vcpu: 0, gpa: 0x1000, exit: .mmio)])
        #expect(left2.count == 1, "every record is taken: \(left2)")
    }
}
