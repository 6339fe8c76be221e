import Foundation
import Testing
import GuestCode
@_exported import TestSupport
@testable import VMM

func makeVMM(_ tweak: (inout VMMConfiguration) -> Void = { _ in }) throws -> ReferenceVMM {
    var c = VMMConfiguration()
    c.vcpus = 2
    c.ramSize = 64 << 20
    c.allowMutations = true
    c.allowFaultInjection = true
    tweak(&c)
    return try ReferenceVMM(c)
}

/// A VMM made with `tweak`, started, with vCPU 0's guest already beating (the caller stops it).
func runningVMM(sourceLocation: SourceLocation = #_sourceLocation, _ tweak: (inout VMMConfiguration) -> Void = { _ in }) throws -> ReferenceVMM {
    let vmm = try makeVMM(tweak)
    vmm.start()
    #expect(eventually { vmm.guestCounters(0).heartbeat > 3 }, "the guest did not start beating", sourceLocation: sourceLocation)
    return vmm
}

/// Memslots never overlap, each lies in the view its run belongs to, and their count equals the runs.
func checkLayout(_ vmm: ReferenceVMM, sourceLocation: SourceLocation = #_sourceLocation) throws {
    // One cut (the memory lock held for both): read one after the other, a guest conversion in between made
    // the memslots and runs disagree by one in a CI run.
    let capture = vmm.captureState(faultLimit: 0)
    let slots = capture.memslots
    // The runs, cut where the VMM pins a memslot edge (below it live the guest's code and tables) and at every
    // multiple of the memslot span.
    let span = vmm.memory.memslotSpan * 4096
    let pinned = Set(vmm.memory.pinnedBoundaries.map { $0 * 4096 })
    var runs: [AttributeRun] = []
    for var run in capture.attributes.runs {
        var b = (run.gpa / span + 1) * span
        for p in pinned.sorted() where p > run.gpa && p < b { b = p }
        while b < run.end {
            runs.append(AttributeRun(gpa: run.gpa, size: b - run.gpa, isPrivate: run.isPrivate))
            run = AttributeRun(gpa: b, size: run.end - b, isPrivate: run.isPrivate)
            b = (run.gpa / span + 1) * span
            for p in pinned.sorted() where p > run.gpa && p < b { b = p }
        }
        runs.append(run)
    }
    let alias = vmm.sharedAlias ?? 0
    let byGPA = Dictionary(slots.map { ($0.gpa, $0) }, uniquingKeysWith: { a, _ in a })
    #expect(slots.count == runs.count, "memslots \(slots.count) vs runs \(runs.count)", sourceLocation: sourceLocation)
    let sorted = slots.sorted { $0.gpa < $1.gpa }
    for (a, b) in zip(sorted, sorted.dropFirst()) {
        #expect(a.gpa + a.size <= b.gpa, "slots \(a.slot) and \(b.slot) overlap", sourceLocation: sourceLocation)
    }
    for run in runs {
        let gpa = run.isPrivate ? run.gpa : run.gpa | alias
        let slot = byGPA[gpa].flatMap { $0.size == run.size ? $0 : nil }
        #expect(slot != nil, "no memslot for run \(run)", sourceLocation: sourceLocation)
        #expect(slot?.view == (run.isPrivate ? .private : .shared), sourceLocation: sourceLocation)
    }
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ReferenceVMMTests {
    @Test func twoVCPUsRunTheGuestWithoutIntegrityErrors() throws {
        let vmm = try makeVMM()
        vmm.start()
        defer { vmm.stop() }
        Thread.sleep(forTimeInterval: 1)
        let first = (0..<2).map { vmm.guestCounters($0).heartbeat }
        Thread.sleep(forTimeInterval: 1)
        // Under a loaded machine (2 cores, every guest instruction emulated) progress can take longer than the
        // 2 s the guest runs before this point; wait for it, boundedly, then check what it did.
        let progressed = eventually(15) {
            (0..<2).allSatisfy {
                let c = vmm.guestCounters($0)
                return c.heartbeat > first[$0] && c.doorbellRequests > 0
            } && vmm.faults.total > 0
        }
        #expect(progressed, "heartbeats \((0..<2).map { vmm.guestCounters($0).heartbeat }) from \(first), faults \(vmm.faults.total)")
        for i in 0..<2 {
            let c = vmm.guestCounters(i)
            #expect(c.heartbeat > first[i], "vcpu \(i) heartbeat stuck at \(c.heartbeat); state \(vmm.vcpuState(i))")
            #expect(c.integrityErrors == 0)
            #expect(c.bounceErrors == 0)
            #expect(c.exceptions == 0, "exception vector \(String(describing: c.lastException))")
            #expect(c.doorbellRequests > 0)
            #expect(c.doorbellFailures == 0)
            #expect(vmm.vcpuState(i) == .running)
        }
        // The wrong-view touches produced vmm-source faults, converted implicitly.
        let faults = vmm.faults.recent(100)
        #expect(!faults.isEmpty)
        #expect(faults.allSatisfy { $0.source == .vmm && $0.exit == "MMIO" })
        try checkLayout(vmm)
    }
}

