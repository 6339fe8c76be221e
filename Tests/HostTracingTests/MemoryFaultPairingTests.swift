import KVM
import Testing
@testable import HostTracing

/// `MemoryFaultPairing` keeps the newest page fault out of its table while one thread's run lasts: whatever the
/// threads' interleaving, each MEMORY_FAULT exit is paired with its own thread's newest page fault since that
/// thread's last exit, or with none, as a table of every thread's newest would pair it.
struct MemoryFaultPairingTests {
    @Test func pairsAsATableOfEachThreadsNewestFaultDoes() {
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<200 {
            var pairing = MemoryFaultPairing()
            var newest: [Int32: UInt64] = [:]   // the reference: each thread's newest page fault's address
            let threads = Int32(trial % 4 + 1)
            var t: UInt64 = 0
            var runTid = Int32(0)
            for _ in 0..<300 {
                t += 1
                // Runs of one thread, as the kernel gives them, broken now and then.
                if Int.random(in: 0..<4, using: &rng) == 0 { runTid = Int32.random(in: 0..<threads, using: &rng) }
                if Int.random(in: 0..<5, using: &rng) == 0 {
                    let e = TraceEvent(tid: runTid, cpu: 0, timeNs: t, kind: .userspaceExit(reason: .memoryFault, errno: -14))
                    let f = pairing.apply(e, attributes: nil)
                    #expect(f?.gpa == newest.removeValue(forKey: runTid), "trial \(trial), thread \(runTid) at \(t)")
                } else {
                    let gpa = t << 12
                    newest[runTid] = gpa
                    _ = pairing.apply(TraceEvent(tid: runTid, cpu: 0, timeNs: t, kind: .pageFault(vcpu: UInt32(runTid), rip: 0, address: gpa,
                                                                                                  errorCode: PageFaultErrorCode(rawValue: 4))), attributes: nil)
                }
            }
        }
    }
}
