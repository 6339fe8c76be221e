import Foundation
import Testing
@testable import VMM

let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")

func makeVMM(_ tweak: (inout VMMConfiguration) -> Void = { _ in }) throws -> ReferenceVMM {
    var c = VMMConfiguration()
    c.vcpus = 2
    c.ramSize = 64 << 20
    c.allowMutations = true
    c.allowFaultInjection = true
    tweak(&c)
    return try ReferenceVMM(c)
}

/// Polls `condition` every 10 ms for at most `seconds`.
func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Memslots never overlap, each lies in the view its run belongs to, and their count equals the runs.
func checkLayout(_ vmm: ReferenceVMM, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let slots = vmm.memslots
    // The runs, cut where the VMM pins a memslot edge (below it live the guest's code and tables).
    var runs: [AttributeRun] = []
    for var run in try vmm.queryMemoryAttributes().runs {
        for b in vmm.memory.pinnedBoundaries.map({ $0 * 4096 }) where b > run.gpa && b < run.end {
            runs.append(AttributeRun(gpa: run.gpa, size: b - run.gpa, isPrivate: run.isPrivate))
            run = AttributeRun(gpa: b, size: run.end - b, isPrivate: run.isPrivate)
        }
        runs.append(run)
    }
    let alias = vmm.sharedAlias ?? 0
    #expect(slots.count == runs.count, "memslots \(slots.count) vs runs \(runs.count)", sourceLocation: sourceLocation)
    let sorted = slots.sorted { $0.gpa < $1.gpa }
    for (a, b) in zip(sorted, sorted.dropFirst()) {
        #expect(a.gpa + a.size <= b.gpa, "slots \(a.slot) and \(b.slot) overlap", sourceLocation: sourceLocation)
    }
    for run in runs {
        let gpa = run.isPrivate ? run.gpa : run.gpa | alias
        let slot = slots.first { $0.gpa == gpa && $0.size == run.size }
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
