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

    /// The kernel's pairing (`KernelPairing.memoryFaults`: a hist trigger keeps each thread's newest page fault, read once by
    /// its next MEMORY_FAULT exit, whose trigger writes the paired fault just after the exit) gives the records
    /// vmscope's pairing makes from the page faults themselves: the same exits, at the same times, with the same GPA,
    /// error code and errno, those without a page fault included.
    @Test func theKernelsPairingGivesTheRecordsVmscopesGives() {
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<200 {
            let threads = Int32(trial % 4 + 1)
            var events: [TraceEvent] = []      // what vmscope reads when it pairs
            var kernelEvents: [TraceEvent] = [] // what it reads when the kernel pairs
            var held: [Int32: (UInt64, UInt64, UInt64)] = [:]   // the hist trigger's variables: each thread's newest page fault
            var t: UInt64 = 0
            var runTid = Int32(0)
            for _ in 0..<300 {
                t += 10
                if Int.random(in: 0..<4, using: &rng) == 0 { runTid = Int32.random(in: 0..<threads, using: &rng) }
                switch Int.random(in: 0..<8, using: &rng) {
                case 0, 1:
                    let exit = TraceEvent(tid: runTid, cpu: 0, timeNs: t, kind: .userspaceExit(reason: .memoryFault, errno: -14))
                    events.append(exit)
                    guard let (gpa, code, faultNs) = held.removeValue(forKey: runTid) else { kernelEvents.append(exit); continue }
                    // The paired fault's own time is the exit's, a little later; the record keeps the exit's. It holds
                    // the time from the page fault to the exit (the exit's timestamp less the fault's, in the kernel).
                    let paired = TraceEvent(tid: runTid, cpu: 0, timeNs: t + 1,
                                            kind: .kernelPairedFault(vcpu: UInt32(runTid), gpa: gpa, errorCode: PageFaultErrorCode(rawValue: code), errno: -14,
                                                                     sinceFaultNs: t - faultNs))
                    kernelEvents += [exit, paired]
                case 2:
                    // The thread goes back in (KVM_RUN), or exits for another reason.
                    let e = TraceEvent(tid: runTid, cpu: 0, timeNs: t, kind: Bool.random(using: &rng)
                                       ? .ioctlEnter(fd: 5, cmd: UInt64(KVMIoctl.run.value)) : .userspaceExit(reason: .io, errno: 0))
                    events.append(e)
                    kernelEvents.append(e)
                default:
                    let gpa = t << 12, code = UInt64.random(in: 0..<8, using: &rng) | 1 << 32
                    held[runTid] = (gpa, code, t)
                    events.append(TraceEvent(tid: runTid, cpu: 0, timeNs: t, kind: .pageFault(vcpu: UInt32(runTid), rip: 0, address: gpa,
                                                                                            errorCode: PageFaultErrorCode(rawValue: code))))
                }
            }
            func faults(_ events: [TraceEvent], kernel: Bool) -> [String] {
                var pairing = TracePairing(tracesConversions: false, complete: false, faultsPairedInKernel: kernel)
                var out: [TracePairing.Paired] = []
                pairing.apply(events, into: &out)
                out += pairing.drain()
                return out.compactMap { p -> (UInt64, String)? in
                    guard case .fault(let f) = p else { return nil }
                    #expect(f.pairedInKernel == kernel)
                    return (f.timeNs, "\(f.tid)@\(f.timeNs) gpa \(f.gpa.map { String($0, radix: 16) } ?? "-") code \(f.errorCode?.rawValue ?? 0) errno \(f.errno) fault at \(f.pageFaultNs.map(String.init) ?? "-")")
                }.sorted { $0.0 < $1.0 }.map(\.1)
            }
            let theirs = faults(kernelEvents, kernel: true), ours = faults(events, kernel: false)
            #expect(theirs == ours, "trial \(trial)")
            #expect(!ours.isEmpty)
        }
    }

    /// A paired fault with no exit waiting on its thread (the exit's event lost) is still a MEMORY_FAULT exit's record
    /// (the kernel writes one only on such an exit): at its own time, with its errno; an exit with none after it goes
    /// out without a GPA at the thread's next event.
    @Test func aPairedFaultWithoutItsExitIsStillARecord() {
        var pairing = TracePairing(tracesConversions: false, complete: false, faultsPairedInKernel: true)
        var out: [TracePairing.Paired] = []
        pairing.apply([
            TraceEvent(tid: 7, cpu: 1, timeNs: 100, kind: .kernelPairedFault(vcpu: 3, gpa: 0x5000, errorCode: PageFaultErrorCode(rawValue: 6), errno: -14, sinceFaultNs: 30)),
            TraceEvent(tid: 7, cpu: 1, timeNs: 200, kind: .userspaceExit(reason: .memoryFault, errno: -14)),
            TraceEvent(tid: 7, cpu: 1, timeNs: 300, kind: .ioctlEnter(fd: 4, cmd: UInt64(KVMIoctl.run.value))),
        ], into: &out)
        let faults = out.compactMap { p -> TracedMemoryFault? in if case .fault(let f) = p { f } else { nil } }
        #expect(faults.map(\.timeNs) == [100, 200])
        #expect(faults.map(\.gpa) == [0x5000, nil])
        #expect(faults.map(\.pageFaultNs) == [70, nil])
        #expect(faults.allSatisfy { $0.pairedInKernel && $0.errno == -14 })
        #expect(pairing.drain().isEmpty)
    }
}
