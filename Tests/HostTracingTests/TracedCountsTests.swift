@testable import HostTracing
import Foundation
import KVM
import ProcessSupport
import Testing

/// `top`'s per-process counts of traced exits to userspace, kept by reason number without a hash an event: the
/// reasons KVM has (below 64) by index, any other number beside them, and all of them read back by name.
struct TracedCountsTests {
    @Test func everyReasonIsCountedAndReadBackByName() {
        let p = HostVMs.TracedTally.Process()
        for r: UInt32 in [2, 2, 39, 63, 64, 1000, 1000, 1000] { p.count(r) }
        let counts = Dictionary(uniqueKeysWithValues: p.byReason.map { ($0.reason, $0.count) })
        #expect(counts == [2: 2, 39: 1, 63: 1, 64: 1, 1000: 3])
        p.unfollow()
        #expect(p.byReason.count == 5, "forgetting the conversions' pairing keeps the counts")
    }

    /// A process that has ended is forgotten at the next sample (its counts, and its threads' ids, which the kernel
    /// gives again); a live one the sample does not follow keeps its counts.
    @Test(.enabled(if: getuid() == 0 && (try? TraceLibraries.api()) != nil, "needs root, libtracefs1 and libtraceevent1"))
    func anEndedProcessIsForgottenALiveOneKept() throws {
        let counts = try HostVMs.TracedCounts()
        defer { counts.session.close() }
        let ended = try ChildProcess(["/bin/true"])
        _ = ended.wait(seconds: 10)
        _ = counts.process(ofThread: ended.pid)
        let live = counts.process(ofThread: getpid())
        live.process.count(2)
        #expect(counts.processesKept == [ended.pid, getpid()])
        counts.follow([])
        #expect(counts.processesKept == [getpid()])
        #expect(counts.userspaceExits(getpid(), reason: .io) == 1)
    }
}
