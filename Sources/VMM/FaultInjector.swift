import CKVM
import KVM
import Schema
import Synchronization

/// The bits of a machine-check bank's `IA32_MCi_STATUS` and of `IA32_MCG_STATUS` an injected #MC sets (Intel SDM
/// vol. 3B, 16.3.2.2 and 16.3.1.2).
enum MachineCheck {
    static let statusValid: UInt64 = 1 << 63           // VAL
    static let uncorrected: UInt64 = 1 << 61           // UC
    static let enabled: UInt64 = 1 << 60               // EN
    static let miscValid: UInt64 = 1 << 59             // MISCV
    static let addressValid: UInt64 = 1 << 58          // ADDRV
    static let restartIPValid: UInt64 = 1 << 0         // MCG_STATUS.RIPV
    static let errorIPValid: UInt64 = 1 << 1           // MCG_STATUS.EIPV
    static let inProgress: UInt64 = 1 << 2             // MCG_STATUS.MCIP
    /// `IA32_MCi_MISC`: address mode physical (bits 8:6 = 2), least significant valid address bit 6 (bits 5:0: the
    /// error is within a 64-byte line of ADDR).
    static let physicalLineAddress: UInt64 = (2 << 6) | 6
}

/// `inject-fault`: NMI and #MC on a vCPU; discard, revoke and flip on a range of RAM. Each leaves a fault record
/// (action `injected`) before any fault it causes, and a `FAULT_INJECTED` event.
final class FaultInjector: Sendable {
    let core: VMCore
    /// Whether `KVM_X86_SETUP_MCE` worked, or the errno it failed with; nil when the kernel emulates no banks.
    let mceSetup: Result<UInt64, KVMError>?

    init(core: VMCore, mceSetup: Result<UInt64, KVMError>?) {
        self.core = core
        self.mceSetup = mceSetup
    }

    func inject(kind: InjectionKind, runner: () throws(VMMError) -> VCPURunner, gpa: UInt64?, size: UInt64?)
        throws(VMMError) -> InjectionReport
    {
        let report: InjectionReport
        switch kind {
        case .nmi:
            let r = try runner()
            try r.perform { v throws(KVMError) in try v.nmi() }
            r.wakeIfHalted()
            report = InjectionReport(kind: kind, vcpu: r.index, detail: "KVM_NMI queued on vcpu \(r.index)")
            core.memory.withLock { appendRecord(report) }
        case .mce:
            let r = try runner()
            guard let gpa else { throw VMMError(.genericError, "mce needs gpa") }
            report = try machineCheck(r, gpa: gpa)
            core.memory.withLock { appendRecord(report) }
        case .discard, .revoke, .flip:
            guard let gpa, let size else { throw VMMError(.genericError, "\(kind.rawValue) needs gpa and size") }
            report = try memoryFault(kind, gpa: gpa, size: size)
        }
        core.counters.injected(kind)
        core.events.append(.faultInjected(report))
        core.logger.notice("fault injected", metadata: ["kind": "\(kind.rawValue)", "detail": "\(report.detail)"])
        return report
    }

    /// A recoverable-context #MC in bank 1 naming the page at `gpa`.
    private func machineCheck(_ r: VCPURunner, gpa: UInt64) throws(VMMError) -> InjectionReport {
        if case .failure(let e)? = mceSetup {
            throw VMMError(.unsupported, "KVM_X86_SETUP_MCE failed: \(e.errnoName) (\(e.errnoText))")
        }
        guard mceSetup != nil else { throw VMMError(.unsupported, "the kernel emulates no MCE banks (KVM_CAP_MCE is 0)") }
        var mce = kvm_x86_mce()
        mce.status = MachineCheck.statusValid | MachineCheck.uncorrected | MachineCheck.enabled | MachineCheck.miscValid
            | MachineCheck.addressValid
        mce.addr = gpa
        mce.misc = MachineCheck.physicalLineAddress
        mce.mcg_status = MachineCheck.inProgress | MachineCheck.errorIPValid | MachineCheck.restartIPValid
        mce.bank = 1
        let m = mce
        do throws(VMMError) { try r.perform { v throws(KVMError) in try v.injectMCE(m) } } catch {
            throw VMMError(.unsupported, "KVM_X86_SET_MCE refused: \(error.description)")
        }
        r.wakeIfHalted()
        return InjectionReport(kind: .mce, vcpu: r.index, gpa: gpa, detail: "KVM_X86_SET_MCE bank 1 addr \(hex(gpa)) on vcpu \(r.index)")
    }

    /// discard, revoke or flip `[gpa, gpa+size)`, all or nothing.
    private func memoryFault(_ kind: InjectionKind, gpa g: UInt64, size s: UInt64) throws(VMMError) -> InjectionReport {
        let memory = core.memory
        return try memory.withLock { () throws(VMMError) -> InjectionReport in
            var followUp: [VMEvent] = []
            let detail: String
            switch kind {
            case .discard:
                try memory.discardContents(gpa: g, size: s)
                detail = "backing punched (FALLOC_FL_PUNCH_HOLE): contents lost"
            case .revoke:
                try memory.revoke(gpa: g, size: s)
                followUp.append(.memslotsChanged(generation: memory.generation))
                detail = "mapping removed: the next access to each page faults"
            default:
                let currentlyPrivate = g < memory.ramSize ? memory.attributes.isPrivate(gfn: g / 4096) : true
                let result = try core.countedConvert(gpa: g, size: s, toPrivate: !currentlyPrivate, discard: false, cause: .injection)
                followUp = core.conversionEvents(result, gpa: g, size: s, toPrivate: !currentlyPrivate, cause: .injection, vcpu: nil)
                detail = "converted to \(currentlyPrivate ? "shared" : "private") behind the guest's back (\(result.runsChanged) runs changed)"
            }
            let report = InjectionReport(kind: kind, vcpu: nil, gpa: g, size: s, detail: detail)
            // Recorded before the lock goes, so the record precedes every fault the injection causes (vCPU threads
            // take the same lock before they record a fault).
            appendRecord(report)
            core.logEvents(followUp)
            return report
        }
    }

    /// The fault record an injection leaves. Caller holds the memory lock.
    private func appendRecord(_ report: InjectionReport) {
        let context = core.memory.faultContext(gfn: report.gpa.map { $0 / 4096 })
        core.faults.append(FaultRecord(timeNs: HostClock.monotonicNs(), vcpu: report.vcpu, gpa: report.gpa ?? 0,
                                       size: report.size ?? 0, flags: 0, isPrivate: false, access: .unknown, errno: nil,
                                       source: .vmm, exit: .none, attribute: context.attribute, slot: context.slot,
                                       action: .injected))
    }
}
