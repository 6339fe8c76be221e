import Foundation
import GuestCode
import KVM
import Synchronization
import Testing
import VMM

/// An exit kind is one handler type and one registration (issue 30): these handlers live here, in the test target,
/// and reach the VMM only through `ReferenceVMM.register(exitHandler:)`.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ExitHandlerTests {
    /// Sees every heartbeat port write; takes them (so the built-in device does not) when `takes`.
    final class HeartbeatWatcher: ExitHandler {
        let takes: Bool
        let seen = Mutex<[Int: Int]>([:])
        init(takes: Bool) { self.takes = takes }

        func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool {
            guard case .ioOut(let port, _, _, _) = exit, port == GuestPort.heartbeat else { return false }
            seen.withLock { $0[vcpu.index, default: 0] += 1 }
            return takes
        }
    }

    @Test func aHandlerFromOutsideTheVMMIsCalledBeforeTheBuiltInOnes() throws {
        let vmm = try makeVMM { $0.guest.wrongViewEvery = 0 }
        let watcher = HeartbeatWatcher(takes: false)
        try vmm.register(exitHandler: watcher)
        vmm.start()
        defer { vmm.stop() }
        #expect(eventually(20) { watcher.seen.withLock { $0[0, default: 0] > 10 && $0[1, default: 0] > 10 } },
                "heartbeats seen by the test's handler: \(watcher.seen.withLock { $0 })")
        // Declined, the exit went on to the built-in port device.
        #expect(vmm.guestCounters(0).heartbeats > 0 && vmm.guestCounters(1).heartbeats > 0)
        #expect { try vmm.register(exitHandler: HeartbeatWatcher(takes: true)) } throws: { error in
            (error as? VMMError)?.description.contains("before the vCPUs start") == true
        }
    }

    @Test func aHandlerThatTakesAnExitKeepsItFromTheBuiltInOnes() throws {
        let vmm = try makeVMM { $0.guest.wrongViewEvery = 0 }
        let watcher = HeartbeatWatcher(takes: true)
        try vmm.register(exitHandler: watcher)
        vmm.start()
        defer { vmm.stop() }
        #expect(eventually(20) { watcher.seen.withLock { $0[0, default: 0] > 10 } })
        #expect(vmm.guestCounters(0).heartbeats == 0, "the built-in device counted heartbeats the test's handler took")
    }
}
