import Foundation
import Testing
import GuestCode
@_exported import TestSupport
@testable import VMM

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct InjectionTests {
    /// The guest's wrong-view touches: none, or every 64 passes (the default).
    @Test(arguments: [0, 64])
    func discardOnTheWorkingSetIsAnIntegrityError(wrongViewEvery: Int) throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = wrongViewEvery }
        defer { vmm.stop() }
        // Each word is checked for what the previous pass wrote just before it is written again, so a discard of
        // vCPU 0's working set (256 pages) shows on nearly every page, wherever in the pass it lands. Ten
        // discards a run, with the vCPUs' registers read meanwhile as an attached inspector does: when the guest
        // checked its whole working set before writing any of it, a discard landing between the two went unseen,
        // and one racing the writes (the kernel punches page by page) showed on a few pages (8 of 100 unseen on the
        // CLI's VMM; here the fewest reports of ten were 24 and 52). Waited for in passes, not seconds (beside the
        // full suite's lab tests, 5 s once went by with the guest barely run; 40 discards a run took 353 s there).
        var fewest = UInt64.max
        for _ in 0..<10 {
            // From a quiet guest: the previous discard's pages reported and written again (two passes without an error).
            var last = vmm.guestCounters(0)
            #expect(eventually(120) {
                _ = vmm.vcpus(withRegisters: true)
                let now = vmm.guestCounters(0)
                if now.integrityErrors != last.integrityErrors { last = now }
                return now.heartbeat >= last.heartbeat + 2
            })
            let before = vmm.guestCounters(0)
            _ = try vmm.injectFault(kind: .discard, gpa: ConversionTests.ws0, size: 1 << 20)
            // Passes counted from when the punch is done, not from before the call: a test thread held off the CPU
            // between the two (CI, beside the lab) let the guest finish the passes counted from `before` with the
            // punch landing in the last, and 101 of 256 pages were counted. It landed in the pass after the last
            // one finished by now at the latest; the pass after that finds what was lost before it was written.
            let landed = vmm.guestCounters(0).heartbeat
            #expect(eventually(120) {
                _ = vmm.vcpus(withRegisters: true)
                return vmm.guestCounters(0).heartbeat >= landed + 3
            })
            fewest = min(fewest, vmm.guestCounters(0).integrityErrors - before.integrityErrors)
        }
        // Every page is reported once at least (twice when lost between its write and its read-back), but for two
        // at most: the one a wrong-view touch gave away, the one between its check and its write.
        #expect(fewest >= 254, "a discard of 256 pages brought \(fewest) reports")
        #expect(vmm.faults.records(after: 0).records.contains { $0.action == .injected })
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
