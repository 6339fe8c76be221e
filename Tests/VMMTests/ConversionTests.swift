import Foundation
import Testing
import GuestCode
@_exported import TestSupport
@testable import VMM

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ConversionTests {
    static let ws0: UInt64 = 0x10_0000   // vCPU 0's working set (256 pages)

    /// Converting the guest's own code (and its tables and stacks, all in the first 2 MiB) to shared: every
    /// instruction fetch from there is a wrong-view access KVM cannot emulate. Each becomes a fault record
    /// (access exec, exit INTERNAL_ERROR) converted back under `convert`, and every vCPU keeps running.
    @Test func convertingTheGuestsCodeSharedGivesExecFaultsAndTheGuestLivesOn() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0 }
        defer { vmm.stop() }
        let before = vmm.faults.total
        let beats = (0..<2).map { vmm.guestCounters($0).heartbeat }
        // discard: false keeps the private copy of the code, which the implicit conversions back find again.
        _ = try vmm.setMemoryAttributes(gpa: 0, size: 2 << 20, toPrivate: false, discard: false)
        #expect(eventually(20) { (0..<2).allSatisfy { vmm.guestCounters($0).heartbeat > beats[$0] + 20 } },
                "heartbeats \((0..<2).map { vmm.guestCounters($0).heartbeat }) from \(beats); states \((0..<2).map { vmm.vcpuState($0) })")
        for i in 0..<2 {
            #expect(vmm.vcpuState(i) == .running, "vcpu \(i): \(vmm.vcpus(withRegisters: false)[i].errorDetail ?? "")")
            #expect(vmm.guestCounters(i).integrityErrors == 0)
            #expect(vmm.guestCounters(i).exceptions == 0)
        }
        let records = vmm.faults.records(after: before).records
        let exec = records.filter { $0.access == .exec }
        #expect(!exec.isEmpty, "no exec records among \(records.count)")
        let code = UInt64(GuestLayout.code)..<UInt64(GuestLayout.bounceBuffers)
        for r in exec {
            #expect(r.exit == "INTERNAL_ERROR" && r.source == .vmm)
            #expect(r.isPrivate && r.attribute == "shared" && r.action == .converted, "\(r)")
            #expect(code.contains(r.gpa), "an exec fault outside the code: \(hex(r.gpa))")
        }
    }

    @Test func convertingTheWorkingSetSharedGivesVMMFaultsAndImplicitConversions() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0 }
        defer { vmm.stop() }
        let before = vmm.faults.total
        let mark = vmm.events.lastSeq
        // discard: false keeps the private copy, so the implicit conversions back find the guest's data.
        _ = try vmm.setMemoryAttributes(gpa: Self.ws0, size: 1 << 20, toPrivate: false, discard: false)
        #expect(eventually { (try? vmm.queryMemoryAttributes(gpa: Self.ws0, size: 1 << 20).sharedBytes) == 0 },
                "the guest's writes should convert every page back to private")
        let records = vmm.faults.records(after: before).records.filter { $0.gpa >= Self.ws0 && $0.gpa < Self.ws0 + (1 << 20) }
        #expect(records.count == 256)
        for r in records {
            #expect(r.source == .vmm && r.exit == "MMIO")
            #expect(r.isPrivate && r.flags == FaultRecord.flagPrivate)
            // The guest may be in its write or its check phase when the range goes shared.
            #expect(r.access == .write || r.access == .read)
            #expect(r.attribute == "shared")
            #expect(r.slot != nil)
            #expect(r.action == .converted)
            #expect(r.vcpu == 0)
        }
        let seqs = vmm.faults.records(after: 0).records.map(\.seq)
        #expect(seqs == Array(1...UInt64(seqs.count)))
        let implicit = vmm.events.events(after: mark).entries.filter { entry in
            guard case .memoryAttributesChanged(_, _, let p, let cause, let v) = entry.event else { return false }
            return p && cause == .implicit && v == 0
        }
        #expect(implicit.count == 256)
        #expect(vmm.vcpuState(0) == .running)
        #expect(vmm.guestCounters(0).integrityErrors == 0)
    }

    @Test func pausePolicyStopsTheVCPUUntilResumed() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0; $0.faultPolicy = .pause }
        defer { vmm.stop() }
        _ = try vmm.setMemoryAttributes(gpa: Self.ws0 + 0x1000, size: 0x1000, toPrivate: false)
        #expect(vmm.waitForState(0, [.faultStopped], timeout: 5))
        let beat = vmm.guestCounters(0).heartbeat
        Thread.sleep(forTimeInterval: 0.2)
        #expect(vmm.guestCounters(0).heartbeat == beat, "a fault-stopped vCPU must not run")
        #expect(vmm.faults.recent(1).first?.action == .paused)
        #expect(vmm.vcpuState(1) == .running)
        _ = try vmm.vcpuControl(index: 0, action: .resume)
        #expect(eventually { vmm.guestCounters(0).heartbeat > beat })
        #expect(try vmm.queryMemoryAttributes(gpa: Self.ws0 + 0x1000, size: 0x1000).privateBytes == 0x1000)
    }

    @Test func guestDoorbellConvertsItsBounceBufferAndLayoutFollows() throws {
        let vmm = try makeVMM { $0.guest.convertEvery = 1; $0.guest.wrongViewEvery = 0 }
        vmm.start()
        defer { vmm.stop() }
        #expect(eventually { vmm.guestCounters(0).doorbellRequests > 20 && vmm.guestCounters(1).doorbellRequests > 20 })
        let requests = vmm.events.events(after: 0).entries.compactMap { e -> (UInt64, Bool)? in
            guard case .memoryAttributesChanged(let gpa, _, let p, let cause, _) = e.event, cause == .guestRequest else { return nil }
            return (gpa, p)
        }
        #expect(requests.contains { $0.0 == 0x80000 && !$0.1 } && requests.contains { $0.0 == 0x80000 && $0.1 })
        #expect(requests.contains { $0.0 == 0x81000 })
        _ = try vmm.vcpuControl(index: nil, action: .pause)
        try checkLayout(vmm)
        for i in 0..<2 {
            #expect(vmm.guestCounters(i).bounceErrors == 0)
            #expect(vmm.guestCounters(i).doorbellFailures == 0)
        }
        _ = try vmm.vcpuControl(index: nil, action: .resume)
    }

    @Test func badConversionsAreRefusedAndChangeNothing() throws {
        let vmm = try makeVMM { $0.runGuest = false; $0.memslotLimit = 6 }
        let runs = try vmm.queryMemoryAttributes().runs
        let slots = vmm.memslots
        let cases: [(UInt64, UInt64, VMMError.Class)] = [
            (0x1001, 0x1000, .invalidRange), (0x1000, 0x800, .invalidRange), (0x1000, 0, .invalidRange),
            (vmm.memory.ramSize, 0x1000, .invalidRange), (vmm.memory.ramSize - 0x1000, 0x2000, .invalidRange),
            (UInt64.max - 0xFFF, 0x2000, .invalidRange),
        ]
        for (gpa, size, cls) in cases {
            #expect { try vmm.setMemoryAttributes(gpa: gpa, size: size, toPrivate: false) } throws: {
                ($0 as? VMMError)?.errorClass == cls
            }
        }
        // Up to the limit of 6 memslots: 1 -> 3 -> 5 runs fit, the next split would need 7.
        _ = try vmm.setMemoryAttributes(gpa: 0x10000, size: 0x1000, toPrivate: false)
        _ = try vmm.setMemoryAttributes(gpa: 0x20000, size: 0x1000, toPrivate: false)
        let runsAtLimit = try vmm.queryMemoryAttributes().runs
        let slotsAtLimit = vmm.memslots
        #expect {
            try vmm.setMemoryAttributes(gpa: 0x30000, size: 0x1000, toPrivate: false)
        } throws: { error in
            let e = error as? VMMError
            return e?.errorClass == .unsupported && e?.description.contains("limit is 6") == true
        }
        #expect(try vmm.queryMemoryAttributes().runs == runsAtLimit)
        #expect(vmm.memslots == slotsAtLimit)
        #expect(runs.count == 1 && slots.count == 1)
        try checkLayout(vmm)
    }

    @Test func mutationsNeedPermission() throws {
        let vmm = try makeVMM { $0.runGuest = false; $0.allowMutations = false; $0.allowFaultInjection = false }
        #expect { try vmm.setMemoryAttributes(gpa: 0, size: 0x1000, toPrivate: false) } throws: {
            ($0 as? VMMError)?.errorClass == .permissionDenied
        }
        #expect { try vmm.injectFault(kind: .nmi, vcpu: 0) } throws: { ($0 as? VMMError)?.errorClass == .permissionDenied }
        #expect(try vmm.queryMemoryAttributes().sharedBytes == 0)
    }
}
