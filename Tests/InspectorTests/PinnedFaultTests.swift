import Schema
import Testing
@testable import Inspector

/// The selected fault stays selected as new ones arrive (issue 27, item 7: it drifted #99 → #127 → #158).
struct PinnedFaultTests {
    func record(_ seq: UInt64) -> FaultRecord {
        FaultRecord(seq: seq, timeNs: seq * 1_000_000, vcpu: 0, gpa: 0x100000 + seq * 4096, flags: 8, isPrivate: true,
                    access: .read, source: .vmm, exit: .mmio, attribute: .shared, slot: 0, action: .converted)
    }

    @Test func theCursorFollowsItsRecord() {
        var m = InspectorModel()
        m.apply(faults: FaultBatch(records: (1...100).map(record), dropped: 0), nowNs: 1)
        var u = ui(focus: .faults)
        u.fit(m, width: 160, height: 48)
        for _ in 0..<5 { _ = u.handle(.char("k")) }
        u.fit(m, width: 160, height: 48)
        #expect(u.faultCursor == 5 && u.pinnedFaultSeq == 95, "cursor \(u.faultCursor) pinned \(u.pinnedFaultSeq.map(String.init) ?? "-")")
        m.apply(faults: FaultBatch(records: (101...120).map(record), dropped: 0), nowNs: 2)
        u.fit(m, width: 160, height: 48)
        #expect(u.faultCursor == 25, "still on #95: \(u.faultCursor)")
        let text = Renderer().render(m, u, width: 160, height: 48).text
        #expect(text.contains("#95 flags"), "the details are #95's:\n\(text)")
        // Back to the newest: it follows the stream again.
        _ = u.handle(.char("G"))
        u.fit(m, width: 160, height: 48)
        #expect(u.faultCursor == 0 && u.pinnedFaultSeq == nil)
    }
}
