import Testing
@testable import VMM

@Suite struct RingTests {
    static func record(_ gpa: UInt64) -> FaultRecord {
        FaultRecord(timeNs: 0, vcpu: 0, gpa: gpa, size: 4096, flags: 0, isPrivate: false, access: .read, errno: nil,
                    source: .vmm, exit: .mmio, attribute: .shared, slot: nil, action: .reported)
    }

    @Test func faultRingNumbersWithoutGapsAndCountsOverflow() {
        let ring = FaultRing(capacity: 3)
        for g in 1...5 as ClosedRange<UInt64> { ring.append(Self.record(g * 4096)) }
        #expect(ring.total == 5)
        #expect(ring.dropped == 2)
        let all = ring.records(after: 0)
        #expect(all.records.map(\.seq) == [3, 4, 5])
        let gpas: [UInt64] = [0x3000, 0x4000, 0x5000]
        #expect(all.records.map(\.gpa) == gpas)
        #expect(all.dropped == 2)
        let later = ring.records(after: 3)
        #expect(later.records.map(\.seq) == [4, 5])
        #expect(later.dropped == 0)
        #expect(ring.records(after: 5).records.isEmpty)
        let first: [UInt64] = [3]
        #expect(ring.records(after: 0, limit: 1).records.map(\.seq) == first)
        #expect(ring.recent(2).map(\.seq) == [4, 5])
    }

    @Test func eventLogReaderLearnsWhatItMissed() {
        let log = EventLog(capacity: 2)
        #expect(log.events(after: 0).entries.isEmpty && log.events(after: 0).dropped == 0)
        for g in 1...4 as ClosedRange<UInt64> { log.append(.memslotsChanged(generation: g)) }
        let r = log.events(after: 1)
        #expect(r.entries.map(\.seq) == [3, 4])
        let expected: [VMEvent] = [.memslotsChanged(generation: 3), .memslotsChanged(generation: 4)]
        #expect(r.entries.map(\.event) == expected)
        #expect(r.dropped == 1)
        #expect(log.lastSeq == 4)
    }

    /// Reads straight out of the ring agree with a plain list of everything appended, before and after it wraps.
    @Test(arguments: [1, 2, 5, 16])
    func readsAgreeWithEverythingAppended(capacity: Int) {
        let ring = FaultRing(capacity: capacity)
        var all: [UInt64] = []
        for n in 1...(capacity * 3 + 1) {
            ring.append(Self.record(UInt64(n) * 4096))
            all.append(UInt64(n))
            let kept = Array(all.suffix(capacity))
            for after in [0, max(0, n - capacity - 1), n - 1, n] as [Int] {
                for limit in [1, 2, capacity, .max] {
                    let r = ring.records(after: UInt64(after), limit: limit)
                    let expected = Array(kept.filter { $0 > UInt64(after) }.prefix(limit))
                    #expect(r.records.map(\.seq) == expected, "cap \(capacity) n \(n) after \(after) limit \(limit)")
                    let oldest = kept.first ?? 1
                    #expect(r.dropped == (oldest > UInt64(after) + 1 ? oldest - UInt64(after) - 1 : 0))
                }
            }
            for limit in [0, 1, capacity, capacity + 3] {
                #expect(ring.recent(limit).map(\.seq) == Array(kept.suffix(limit)), "recent \(limit) of \(n)")
            }
        }
    }
}
