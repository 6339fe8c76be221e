import Foundation
import GuestCode
import Schema
import Testing
@testable import VMM

/// Converting the built-in guest's own code, tables and stacks (issue 30): `set-memory-attributes` gpa 0, 2 MiB, to
/// shared, as an operator does from the map. With discard (the default) the conversion used to punch the private
/// backing under the running code: the vCPUs ran through zeros to 0x200000 and stopped with
/// `KVM_EXIT_INTERNAL_ERROR` (EMULATION). Done 20 times in a loop on 2 vCPUs, while both run.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct CodePageTests {
    static let rounds = 20

    /// No vCPU in `error`, and each still beats.
    private func expectAlive(_ vmm: ReferenceVMM, _ round: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        for i in 0..<vmm.vcpuCount {
            #expect(vmm.vcpuState(i) != .error,
                    "round \(round): vcpu \(i) \(vmm.vcpus(withRegisters: false)[i].errorDetail ?? "")",
                    sourceLocation: sourceLocation)
        }
    }

    @Test func convertingTheGuestsCodeWithDiscardIsRefusedAndTheGuestLivesOn() throws {
        // The guest converts nothing of its own (its bounce buffers lie inside the 2 MiB), so a map that moved would be
        // the refused conversion's doing.
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0; $0.guest.convertEvery = 0 }
        defer { vmm.stop() }
        let before = try vmm.queryMemoryAttributes()
        for round in 0..<Self.rounds {
            #expect { try vmm.setMemoryAttributes(gpa: 0, size: 2 << 20, toPrivate: false) } throws: { error in
                let e = error as? VMMError
                return e?.errorClass == .invalidRange && e?.description.contains("discard") == true
            }
            usleep(20_000)
            expectAlive(vmm, round)
        }
        #expect(try vmm.queryMemoryAttributes() == before, "a refused conversion changed the map")
        let beats = (0..<2).map { vmm.guestCounters($0).heartbeat }
        #expect(eventually(20) { (0..<2).allSatisfy { vmm.guestCounters($0).heartbeat > beats[$0] + 20 } })
        for i in 0..<2 { #expect(vmm.guestCounters(i).integrityErrors == 0) }
    }

    /// Without discard both backings keep their bytes: the code is found again by the implicit conversion back.
    @Test func convertingTheGuestsCodeWithoutDiscardTwentyTimesKeepsEveryVCPURunning() throws {
        let vmm = try runningVMM { $0.guest.wrongViewEvery = 0 }
        defer { vmm.stop() }
        for round in 0..<Self.rounds {
            _ = try vmm.setMemoryAttributes(gpa: 0, size: 2 << 20, toPrivate: false, discard: false)
            usleep(50_000)
            expectAlive(vmm, round)
        }
        let beats = (0..<2).map { vmm.guestCounters($0).heartbeat }
        #expect(eventually(20) { (0..<2).allSatisfy { vmm.guestCounters($0).heartbeat > beats[$0] + 20 } },
                "states \((0..<2).map { vmm.vcpuState($0) })")
        for i in 0..<2 {
            #expect(vmm.guestCounters(i).integrityErrors == 0)
            #expect(vmm.guestCounters(i).exceptions == 0)
        }
    }
}
