import GuestCode
import KVM
import Schema
import Synchronization

/// The built-in guest's port device (`GuestPort`): heartbeats and reports become counters and `GUEST_REPORT`
/// events; the doorbell asks for a conversion; the selftest stops for the host. Ports it does not know are declined
/// (the runner counts them as unassigned).
final class GuestPortDevice: ExitHandler {
    let core: VMCore
    /// When each vCPU last emitted a heartbeat event (monotonic ns), by vCPU index.
    private let lastHeartbeatEvent: Mutex<[Int: UInt64]> = Mutex([:])
    private let selftestHookState = Mutex<(@Sendable (SelftestSync) -> Void)?>(nil)

    init(core: VMCore) { self.core = core }

    /// Called on the vCPU thread at each `GuestPort.selftestSync` of the conversion selftest; the vCPU waits until it
    /// returns.
    var selftestHook: (@Sendable (SelftestSync) -> Void)? {
        get { selftestHookState.withLock { $0 } }
        set { selftestHookState.withLock { $0 = newValue } }
    }

    func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool {
        guard case .ioOut(let port, let size, _, let data) = exit else { return false }
        var value: UInt64 = 0
        for (i, b) in data.prefix(min(size, 8)).enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
        return write(port, value: value, vcpu)
    }

    private func report(_ vcpu: any VCPUContext, _ kind: GuestReportKind, _ value: UInt64, _ update: (inout GuestCounters) -> Void) {
        vcpu.updateGuestCounters(update)
        core.events.append(.guestReport(vcpu: vcpu.index, kind: kind, value: value))
    }

    private func write(_ port: UInt16, value: UInt64, _ vcpu: any VCPUContext) -> Bool {
        switch port {
        case GuestPort.heartbeat:
            vcpu.updateGuestCounters { $0.heartbeat = value; $0.heartbeats += 1 }
            // Heartbeats come thousands of times a second: at most ten events a second per vCPU.
            let now = HostClock.monotonicNs()
            let emit = lastHeartbeatEvent.withLock { last in
                guard now &- last[vcpu.index, default: 0] > 100_000_000 else { return false }
                last[vcpu.index] = now
                return true
            }
            if emit { core.events.append(.guestReport(vcpu: vcpu.index, kind: .heartbeat, value: value)) }
        case GuestPort.integrityError:
            report(vcpu, .integrityError, value) { $0.integrityErrors += 1 }
        case GuestPort.bounceError:
            report(vcpu, .bounceError, value) { $0.bounceErrors += 1 }
        case GuestPort.mceSeen:
            report(vcpu, .mceSeen, value) { $0.mceSeen += 1 }
        case GuestPort.nmiSeen:
            report(vcpu, .nmiSeen, value) { $0.nmiSeen += 1 }
        case GuestPort.exception:
            report(vcpu, .exception, value) { $0.exceptions += 1; $0.lastException = value }
        case GuestPort.doorbellFailed:
            report(vcpu, .doorbellFailed, value) { $0.doorbellFailures += 1 }
        case GuestPort.selftestSync:
            vcpu.updateGuestCounters { $0.selftestSyncs += 1 }
            selftestSync(vcpu, phase: value)
        case GuestPort.doorbell:
            vcpu.updateGuestCounters { $0.doorbellRequests += 1 }
            doorbell(vcpu, descriptor: value)
        default:
            return false
        }
        return true
    }

    /// The selftest stopped for the host: hand the range to the hook.
    private func selftestSync(_ vcpu: any VCPUContext, phase: UInt64) {
        let memory = core.memory
        let block = Int(GuestLayout.parameterBlock(vcpu.index))
        guard let ram = memory.withLock({ memory.currentMapping(gfn: UInt64(block) / 4096) }) else { return }
        let gpa = UInt64(ram.load32(at: block + Int(ParameterBlock.selftestGPA)))
        let size = UInt64(ram.load32(at: block + Int(ParameterBlock.selftestSize)))
        guard let p = SelftestPhase(rawValue: UInt32(truncatingIfNeeded: phase)) else {
            core.logger.warning("selftest sync with unknown phase", metadata: ["phase": "\(phase)"])
            return
        }
        selftestHook?(SelftestSync(vcpu: vcpu.index, phase: p, gpa: gpa, size: size, memory: memory))
    }

    /// The guest's doorbell: the descriptor at `descriptor` (the guest's own RAM) asks for a conversion; its status
    /// word gets 0 (done), 1 (refused: the range) or 2 (refused otherwise).
    private func doorbell(_ vcpu: any VCPUContext, descriptor: UInt64) {
        let memory = core.memory
        // The descriptor lives in the guest's own memory: private RAM (vmm engine) or its shared image (kernel engine).
        let request: (ram: HostMapping, gpa: UInt64, pages: UInt64, toPrivate: Bool)? = memory.withLock {
            guard descriptor % 4 == 0, descriptor + 16 <= memory.ramSize, descriptor / 4096 == (descriptor + 15) / 4096,
                  let ram = memory.currentMapping(gfn: descriptor / 4096),
                  memory.attributes.isPrivate(gfn: descriptor / 4096) || memory.engine.kind == .kernel else { return nil }
            return (ram, UInt64(ram.load32(at: Int(descriptor))), UInt64(ram.load32(at: Int(descriptor) + 4)),
                    ram.load32(at: Int(descriptor) + 8) != 0)
        }
        guard let request else {
            core.logger.warning("doorbell descriptor outside the guest's own RAM", metadata: ["gpa": "\(hex(descriptor))"])
            return
        }
        var status: UInt32 = 0
        do {
            _ = try core.convert(gpa: request.gpa, size: request.pages * 4096, toPrivate: request.toPrivate, discard: true,
                                 cause: .guestRequest, vcpu: vcpu.index)
        } catch {
            status = error.errorClass == .invalidRange ? 1 : 2
            core.logger.warning("guest conversion request refused", metadata: ["vcpu": "\(vcpu.index)", "error": "\(error)"])
        }
        memory.withLock { request.ram.store32(status, at: Int(descriptor) + 12) }
    }
}

/// One stop of the conversion selftest: which vCPU, which phase, the range, and the backings to check.
public struct SelftestSync: @unchecked Sendable {
    // @unchecked: `memory` is only read through its backings' mappings, which the hook may touch freely.
    public var vcpu: Int
    public var phase: SelftestPhase
    public var gpa: UInt64
    public var size: UInt64
    public let memory: GuestMemory
}
