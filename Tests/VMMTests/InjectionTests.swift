import Foundation
import Testing
import GuestCode
@_exported import TestSupport
@testable import VMM

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct InjectionTests {
    /// The guest's wrong-view touches (every 64 passes by default, or none) and how many discards each run makes.
    static let discardRuns: [(wrongViewEvery: Int, discards: Int)] = [(0, 120), (64, 200)]

    @Test(arguments: discardRuns)
    func discardOnTheWorkingSetIsAnIntegrityError(wrongViewEvery: Int, discards: Int) throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = wrongViewEvery }
        defer { vmm.stop() }
        let mark = vmm.events.lastSeq
        // Each pass first checks what the previous one wrote, so a discard the guest sees at one instant shows
        // within the passes after it, wherever it lands: waited for in passes, not seconds (beside the full suite's
        // lab tests, 5 s once went by with the guest barely run). Many discards, with the vCPUs' registers read
        // meanwhile as an attached inspector does. Two ways the loss went unseen before:
        // - a punch the guest could watch page by page (4 or 5 discards in 200 without wrong-view touches): its
        //   precheck read each page before the punch reached it, and its writes followed the punch;
        // - with the vCPUs held for the punch, the guest still read its old data for passes on end (about 3 in
        //   1,000 with wrong-view touches): translations the punch's invalidation did not reach.
        var unseen: [Int] = []
        for i in 0..<discards {
            // From a quiet guest: the previous discard's pages reported and written again (two passes without an
            // error). A discard landing while the guest still reports the last one can meet only pages it has
            // checked already and will write before reading: a loss no guest can see.
            var last = vmm.guestCounters(0)
            #expect(eventually(120) {
                _ = vmm.vcpus(withRegisters: true)
                let now = vmm.guestCounters(0)
                if now.integrityErrors != last.integrityErrors { last = now }
                return now.heartbeat >= last.heartbeat + 2
            })
            let before = vmm.guestCounters(0)
            _ = try vmm.injectFault(kind: .discard, gpa: ConversionTests.ws0, size: 1 << 20)
            #expect(eventually(120) {
                _ = vmm.vcpus(withRegisters: true)
                let now = vmm.guestCounters(0)
                return now.integrityErrors > before.integrityErrors || now.heartbeat > before.heartbeat + 3
            })
            if vmm.guestCounters(0).integrityErrors == before.integrityErrors { unseen.append(i) }
        }
        #expect(unseen.isEmpty, "discards the guest did not see: \(unseen) of \(discards)")
        #expect(vmm.faults.records(after: 0).records.contains { $0.action == .injected })
        #expect(vmm.guestCounters(1).integrityErrors == 0)
        // The vCPUs were held out of KVM_RUN for each punch, not paused: no state change was announced.
        #expect(!vmm.events.events(after: mark).entries.contains { if case .vcpuStateChanged = $0.event { true } else { false } })
    }

    @Test func discardMakesTheMemslotsOverTheRangeAgain() throws {
        let vmm = try makeVMM { $0.guest.wrongViewEvery = 0 }
        let slots = vmm.memslots
        let generation = vmm.memory.withLock { vmm.memory.generation }
        let mark = vmm.events.lastSeq
        _ = try vmm.injectFault(kind: .discard, gpa: ConversionTests.ws0, size: 1 << 20)
        let after = vmm.memory.withLock { vmm.memory.generation }
        #expect(after > generation, "the memslot over the range was deleted and created again")
        #expect(vmm.memslots == slots, "the same memslots as before")
        #expect(vmm.events.events(after: mark).entries.contains { $0.event == .memslotsChanged(generation: after) })
        try checkLayout(vmm)
    }

    @Test func mceReachesTheGuestHandler() throws {
        let vmm = try makeVMM { $0.guest.wrongViewEvery = 0 }
        vmm.start()
        defer { vmm.stop() }
        #expect(eventually { vmm.guestCounters(1).heartbeat > 3 })
        do {
            _ = try vmm.injectFault(kind: .mce, vcpu: 1, gpa: 0x200000)
            #expect(eventually { vmm.guestCounters(1).mceSeen == 1 })
            #expect(vmm.vcpuState(1) == .running)
            #expect(eventually { vmm.guestCounters(1).heartbeat > 20 }, "the guest goes on after its #MC handler")
            #expect(vmm.faults.recent(1).first?.action == .injected)
        } catch {
            #expect(error.errorClass == .unsupported, "\(error)")
        }
        _ = try vmm.injectFault(kind: .nmi, vcpu: 0)
        #expect(eventually { vmm.guestCounters(0).nmiSeen == 1 })
        let beat = vmm.guestCounters(0).heartbeat
        #expect(eventually { vmm.guestCounters(0).heartbeat > beat }, "the guest goes on after its NMI handler")
        #expect(vmm.guestCounters(0).exceptions == 0 && vmm.guestCounters(1).exceptions == 0)
    }

    @Test func revokeProducesFaultsAndTheGuestCarriesOn() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0 }
        defer { vmm.stop() }
        let before = vmm.faults.total
        _ = try vmm.injectFault(kind: .revoke, gpa: ConversionTests.ws0, size: 0x4000)
        #expect(eventually { vmm.faults.records(after: before).records.filter { $0.action == .remapped }.count == 4 })
        let remapped = vmm.faults.records(after: before).records.filter { $0.action == .remapped }
        #expect(remapped.allSatisfy { $0.attribute == "private" && $0.isPrivate && $0.exit == "MMIO" })
        #expect(vmm.guestCounters(0).integrityErrors == 0)
        #expect(eventually { vmm.memory.lock.withLock { vmm.memory.revoked.runCount == 1 } })
    }

    @Test func flipProducesFaultsAndAnInjectionAttributeChange() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0 }
        defer { vmm.stop() }
        let before = vmm.faults.total
        let mark = vmm.events.lastSeq
        _ = try vmm.injectFault(kind: .flip, gpa: ConversionTests.ws0, size: 0x8000)
        let expected = VMEvent.memoryAttributesChanged(gpa: ConversionTests.ws0, size: 0x8000, isPrivate: false,
                                                       cause: .injection, vcpu: nil)
        let changes = vmm.events.events(after: mark).entries.filter { $0.event == expected }
        #expect(changes.count == 1)
        #expect(eventually { vmm.faults.records(after: before).records.filter { $0.action == .converted }.count == 8 })
        #expect(vmm.faults.records(after: before).records.first?.action == .injected)
    }
}
