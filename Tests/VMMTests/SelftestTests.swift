import Foundation
import GuestCode
import Synchronization
import Testing
@testable import VMM

/// The host side of the conversion selftest: what the backings must hold at each stop, checked word by word.
final class SelftestHost: Sendable {
    let wordStride: UInt64
    private let state = Mutex<(stops: [String: Int], problems: [String])>(([:], []))

    init(stride: UInt64) { self.wordStride = stride }

    var problems: [String] { state.withLock { $0.problems } }
    func stops(_ phase: SelftestPhase, offset: UInt64, size: UInt64) -> Int {
        state.withLock { $0.stops["\(phase) \(offset) \(size)", default: 0] }
    }

    /// Every word of `[gpa, gpa+size)` in `backing`: `gpa ^ key` at the guest's stride, zero elsewhere.
    private func check(_ backing: RAMBacking, _ name: String, _ s: SelftestSync, key: UInt32?) {
        // A guest_memfd the kernel does not let the VMM map cannot be checked from the host (nor can the
        // upstream selftest check it): only the shared side is.
        guard let mapping = backing.mapping else { return }
        var bad = 0
        var first = ""
        for p in stride(from: s.gpa, to: s.gpa + s.size, by: 4) {
            let expected: UInt32 = key.map { p % wordStride == 0 ? UInt32(p) ^ $0 : 0 } ?? 0
            let actual = mapping.load32(at: Int(p))
            if actual != expected {
                if bad == 0 { first = "\(hex(p)): \(hex(UInt64(actual))) instead of \(hex(UInt64(expected)))" }
                bad += 1
            }
        }
        if bad > 0 {
            let message = "vcpu \(s.vcpu) \(s.phase) [\(hex(s.gpa)), +\(hex(s.size))): \(bad) bad words in the \(name) backing, first \(first)"
            state.withLock { $0.problems.append(message) }
        }
    }

    func handle(_ s: SelftestSync, regionBase: (Int) -> UInt64) {
        let offset = s.gpa - regionBase(s.vcpu)
        state.withLock { $0.stops["\(s.phase) \(offset) \(s.size)", default: 0] += 1 }
        switch s.phase {
        case .sharedWritten:
            check(s.memory.sharedBacking, "shared", s, key: SelftestPhase.sharedKey)
            check(s.memory.privateBacking, "private (discarded on conversion)", s, key: nil)
            for p in stride(from: s.gpa, to: s.gpa + s.size, by: Int(wordStride)) {
                s.memory.sharedMapping.store32(UInt32(p) ^ SelftestPhase.hostKey, at: Int(p))
            }
        case .privateWritten:
            check(s.memory.privateBacking, "private", s, key: SelftestPhase.privateKey)
            check(s.memory.sharedBacking, "shared (discarded on conversion)", s, key: nil)
        }
    }
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct SelftestTests {
    /// The kernel selftest's ranges, driven by the guest's doorbell on three vCPUs at once.
    @Test func conversionMatrixOnThreeVCPUs() throws {
        let stride = 512
        let pages = SelftestPhase.regionPages
        let vmm = try makeVMM {
            $0.vcpus = 3
            $0.ramSize = 32 << 20
            $0.guest = GuestOptions(workingSetPages: pages, stride: stride, selftest: true)
        }
        let host = SelftestHost(stride: UInt64(stride))
        vmm.selftestHook = { host.handle($0) { UInt64(GuestLayout.workingSet($0, pages: pages)) } }
        vmm.start()
        defer { vmm.stop() }
        // Two passes over the table on every vCPU.
        let done = eventually(120) { (0..<3).allSatisfy { vmm.guestCounters($0).heartbeat >= 2 } }
        #expect(done, "passes \((0..<3).map { vmm.guestCounters($0).heartbeat }), states \((0..<3).map { vmm.vcpuState($0) })")
        #expect(host.problems.isEmpty, "\(host.problems.prefix(5))")
        for i in 0..<3 {
            let c = vmm.guestCounters(i)
            #expect(c.integrityErrors == 0, "vcpu \(i): the guest saw \(c.integrityErrors) bad pages")
            #expect(c.doorbellFailures == 0)
            #expect(c.exceptions == 0)
            #expect(c.doorbellRequests >= 2 * 2 * UInt64(SelftestPhase.ranges.count))
        }
        for r in SelftestPhase.ranges {
            for phase in [SelftestPhase.sharedWritten, .privateWritten] {
                #expect(host.stops(phase, offset: UInt64(r.offset), size: UInt64(r.size)) >= 2 * 3,
                        "\(phase) (\(hex(UInt64(r.offset))), \(hex(UInt64(r.size))))")
            }
        }
        // Guest requests, not fault conversions: no wrong-view access happened.
        #expect(vmm.faults.total == 0)
        try checkLayout(vmm)
    }
}
