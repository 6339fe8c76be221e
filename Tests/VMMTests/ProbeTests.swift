import Foundation
import Testing
@testable import VMM

@Suite(.serialized, .enabled(if: kvmPresent && ProcessInfo.processInfo.environment["VMSCOPE_PROBE"] != nil))
struct ProbeTests {
    @Test(arguments: [0, 8]) func passRate(convertEvery: Int) throws {
        let vmm = try makeVMM { $0.guest.convertEvery = convertEvery; $0.guest.wrongViewEvery = 0; $0.vcpus = 1 }
        vmm.start()
        defer { vmm.stop() }
        Thread.sleep(forTimeInterval: 1)
        print("PROBE convertEvery \(convertEvery): passes/s", vmm.guestCounters(0).heartbeat, vmm.vcpus(withRegisters: false)[0].statistics.filter { $0.value > 0 })
        let t0 = Date()
        let r = try vmm.setMemoryAttributes(gpa: 0x200000, size: 0x1000, toPrivate: false)
        print("PROBE conversion", Date().timeIntervalSince(t0), r)
    }
}
