@testable import HostTracing
import KVM
import Testing

/// `top`'s per-process counts of traced exits to userspace, kept by reason number without a hash an event: the
/// reasons KVM has (below 64) by index, any other number beside them, and all of them read back by name.
struct TracedCountsTests {
    @Test func everyReasonIsCountedAndReadBackByName() {
        let p = HostVMs.TracedCounts.Process()
        for r: UInt32 in [2, 2, 39, 63, 64, 1000, 1000, 1000] { p.count(r) }
        let counts = Dictionary(uniqueKeysWithValues: p.byReason.map { ($0.reason, $0.count) })
        #expect(counts == [2: 2, 39: 1, 63: 1, 64: 1, 1000: 3])
        p.unfollow()
        #expect(p.byReason.count == 5, "forgetting the conversions' pairing keeps the counts")
    }
}
