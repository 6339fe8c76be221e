import Foundation
import Testing
import GuestCode
@_exported import TestSupport
@testable import VMM

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct InjectionTests {
    @Test func discardOnTheWorkingSetIsAnIntegrityError() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0 }
        defer { vmm.stop() }
        // Each pass first checks what the previous one wrote, so one discard, whenever it lands, shows within the
        // passes after it: waited for in passes, not seconds (beside the full suite's lab tests, 5 s once went by
        // with the guest barely run and no error yet).
        let beat = vmm.guestCounters(0).heartbeat
        _ = try vmm.injectFault(kind: .discard, gpa: ConversionTests.ws0, size: 1 << 20)
        #expect(eventually(120) { vmm.guestCounters(0).integrityErrors > 0 || vmm.guestCounters(0).heartbeat > beat + 3 })
        #expect(vmm.guestCounters(0).integrityErrors > 0)
        #expect(vmm.faults.recent(1).first?.action == .injected)
        #expect(vmm.guestCounters(1).integrityErrors == 0)
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
