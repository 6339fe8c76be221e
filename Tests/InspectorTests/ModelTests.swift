import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

struct ModelTests {
    @Test func faultEventsAccumulateAndDropsAreCounted() throws {
        let m = try fixtureModel()
        #expect(m.faultsReceived == 2 && m.faultsDropped == 4)
        #expect(m.visibleFaults.map(\.seq) == [5, 6])
        #expect(m.recentFaults[257] == 2_000_000_000)
        #expect(m.memslot(containing: 0x100000)?.slot == 7)
        #expect(m.attribute(at: 0x100000) == false && m.attribute(at: 0x200000) == true && m.attribute(at: 1 << 30) == nil)
    }

    @Test func fadingMarksStayBoundedUnderABurst() {
        var m = InspectorModel(faultCapacity: 1000)
        for i in 0..<50_000 as Range<UInt64> {
            m.append(fault: FaultRecord(seq: i + 1, vcpu: 0, gpa: i * 4096, flags: 8, access: "read"), nowNs: 1_000 + i)
        }
        #expect(m.recentFaults.count == m.recentFaults.capacity)
        #expect(m.recentFaults[49_999] == 1_000 + 49_999, "the newest mark is kept")
        #expect(m.visibleFaults.count == 1000 && m.visibleFaults.last?.seq == 50_000)
        #expect(m.faultsReceived == 50_000)
    }

    @Test func aBatchLeavesTheModelAsItsRecordsOneByOneWould() {
        // Batches smaller than, straddling and larger than the buffer, across a second boundary.
        var batched = InspectorModel(faultCapacity: 700), single = InspectorModel(faultCapacity: 700)
        var seq: UInt64 = 0
        for (n, ns) in [(300, 1_000), (0, 1_200), (500, 1_000_000_500), (1_500, 1_000_000_900), (7, 4_000_000_000)]
            as [(Int, UInt64)] {
            let records = (0..<n).map { _ -> FaultRecord in
                seq += 1
                return FaultRecord(seq: seq, vcpu: Int(seq % 3), gpa: seq * 4096, flags: 8, access: "write")
            }
            batched.apply(faults: FaultBatch(records: records, dropped: 2), nowNs: ns)
            single.faultsDropped += 2
            for r in records { single.append(fault: r, nowNs: ns) }
        }
        #expect(batched.visibleFaults.map(\.seq) == single.visibleFaults.map(\.seq))
        #expect(batched.visibleFaults.count == 700 && batched.visibleFaults.last?.seq == seq)
        #expect(batched.faultsReceived == single.faultsReceived && batched.faultsDropped == single.faultsDropped)
        #expect(batched.faultRate == single.faultRate && batched.faultRate.reduce(0, +) == 2_307)
        #expect(Array(batched.recentFaults.map(\.gfn)) == Array(single.recentFaults.map(\.gfn)))
    }

    @Test func changeEventsMarkQueriesStale() throws {
        var m = try fixtureModel()
        #expect(!m.memslotsStale && !m.attributesStale)
        m.apply(event: try JSON.parse(#"{"event":"MEMORY_ATTRIBUTES_CHANGED","data":{"gpa":0,"size":4096,"private":false,"cause":"command","vcpu":null}}"#), nowNs: 0)
        #expect(m.memslotsStale && m.attributesStale)
    }

    /// A dropped event may have been a change of either (and an action no longer re-reads everything): the views
    /// are read again, not left as they were.
    @Test func droppedEventsMarkQueriesStale() throws {
        var m = try fixtureModel()
        m.apply(event: try JSON.parse(#"{"event":"EVENTS_DROPPED","data":{"count":3}}"#), nowNs: 0)
        #expect(m.memslotsStale && m.attributesStale && m.eventsDropped == 3)
    }
}
