import CKVM
import ControlProtocol
import Foundation
import KVM
import VMM

/// The VMM's values as the schema's types (docs/control-protocol.md); the schema writes the JSON.
enum Encode {
    static func vm(_ vmm: ReferenceVMM) -> VMDescription {
        let c = vmm.configuration
        return VMDescription(
            name: c.name, pid: Int(getpid()), vmType: UInt64(vmm.decision.vmType.rawValue), attributeEngine: vmm.engineKind,
            sharedAlias: vmm.sharedAlias.map { $0.trailingZeroBitCount }, ramSize: c.ramSize, vcpus: vmm.vcpuCount,
            mutationsAllowed: c.allowMutations, faultInjectionAllowed: c.allowFaultInjection,
            memoryReadsAllowed: c.allowMemoryReads, faultPolicy: vmm.faultPolicy, kvmCapabilities: capabilities(vmm.capabilities))
    }

    static func memslot(_ m: MemslotInfo) -> Memslot {
        Memslot(slot: m.slot, asID: m.addressSpace, gpa: m.gpa, size: m.size, flags: UInt64(m.flags.rawValue),
                flagNames: m.flags.names, view: .known(m.view), backing: .known(m.backing),
                guestMemfdOffset: m.guestMemfdOffset, userspaceAddress: m.userspaceAddress)
    }

    /// Exit reasons and statistics by name, sorted (KVM names them).
    static func sorted(_ m: [String: UInt64]) -> [(String, UInt64)] {
        m.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// The general-purpose registers, under their x86 names.
    static func registers(_ r: kvm_regs) -> [(String, UInt64)] {
        [("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx), ("rsi", r.rsi), ("rdi", r.rdi), ("rsp", r.rsp),
         ("rbp", r.rbp), ("r8", r.r8), ("r9", r.r9), ("r10", r.r10), ("r11", r.r11), ("r12", r.r12), ("r13", r.r13),
         ("r14", r.r14), ("r15", r.r15), ("rip", r.rip), ("rflags", r.rflags)]
    }

    static func segment(_ s: kvm_segment) -> SegmentRegister {
        SegmentRegister(selector: UInt64(s.selector), base: s.base, limit: UInt64(s.limit), type: UInt64(s.type), dpl: UInt64(s.dpl),
                db: UInt64(s.db), l: UInt64(s.l))
    }

    static func specialRegisters(_ s: kvm_sregs) -> SpecialRegisters {
        SpecialRegisters(control: [(.cr0, s.cr0), (.cr2, s.cr2), (.cr3, s.cr3), (.cr4, s.cr4), (.efer, s.efer)],
                         segments: [(.cs, segment(s.cs)), (.ds, segment(s.ds)), (.es, segment(s.es)), (.fs, segment(s.fs)),
                                    (.gs, segment(s.gs)), (.ss, segment(s.ss))])
    }

    static func guest(_ g: GuestCounters) -> [(String, UInt64)] {
        GuestCounter.allCases.map { c in
            let v: UInt64 = switch c {
            case .heartbeat: g.heartbeat
            case .heartbeats: g.heartbeats
            case .integrityErrors: g.integrityErrors
            case .bounceErrors: g.bounceErrors
            case .mceSeen: g.mceSeen
            case .nmiSeen: g.nmiSeen
            case .exceptions: g.exceptions
            case .doorbellRequests: g.doorbellRequests
            case .doorbellFailures: g.doorbellFailures
            case .hypercallRequests: g.hypercallRequests
            }
            return (c.rawValue, v)
        }
    }

    static func vcpu(_ v: VCPUSnapshot) -> VCPUStatus {
        VCPUStatus(index: v.index, threadID: Int(v.threadID), state: .known(v.state), lastExit: v.lastExit,
                   exitCounts: sorted(v.exitCounts), registers: v.registers.map(registers),
                   specialRegisters: v.specialRegisters.map(specialRegisters), stats: sorted(v.statistics),
                   error: v.errorDetail, guest: guest(v.guest))
    }

    /// The KVM capabilities the VMM probed, each under its KVM name.
    static func capabilities(_ c: KVMCapabilities) -> [(String, JSON)] {
        [
            ("KVM_GET_API_VERSION", .i(c.apiVersion)),
            ("KVM_CAP_VM_TYPES", .u(c.vmTypesMask)),
            ("KVM_CAP_USER_MEMORY2", .bool(c.userMemory2)),
            ("KVM_CAP_GUEST_MEMFD", .bool(c.guestMemfd)),
            ("KVM_CAP_GUEST_MEMFD_FLAGS", .u(c.guestMemfdFlags.rawValue)),
            ("KVM_CAP_MEMORY_ATTRIBUTES", .u(c.memoryAttributes)),
            ("KVM_CAP_MEMORY_FAULT_INFO", .bool(c.memoryFaultInfo)),
            ("KVM_CAP_EXIT_HYPERCALL", .u(c.exitHypercallMask)),
            ("KVM_CAP_BINARY_STATS_FD", .bool(c.binaryStatsFD)),
            ("KVM_CAP_NR_MEMSLOTS", .i(c.nrMemslots)),
            ("KVM_CAP_MAX_VCPUS", .i(c.maxVCPUs)),
            ("KVM_CAP_MCE", .i(c.mceBanks)),
            ("KVM_CAP_DIRTY_LOG_RING", .i(c.dirtyRingMaxBytes)),
            ("KVM_CAP_IMMEDIATE_EXIT", .bool(c.immediateExit)),
            ("KVM_CAP_PRE_FAULT_MEMORY", .bool(c.preFaultMemory)),
            ("KVM_CAP_SET_GUEST_DEBUG", .bool(c.setGuestDebug)),
        ]
    }

    static func event(_ e: VMEvent) -> Event {
        switch e {
        case .memoryAttributesChanged(let gpa, let size, let isPrivate, let cause, let vcpu):
            .memoryAttributesChanged(gpa: gpa, size: size, isPrivate: isPrivate, cause: .known(cause), vcpu: vcpu)
        case .memslotsChanged(let generation): .memslotsChanged(generation: generation)
        case .vcpuStateChanged(let index, let state, let reason): .vcpuStateChanged(index: index, state: .known(state), reason: reason)
        case .faultInjected(let report): .faultInjected(report)
        case .guestReport(let vcpu, let kind, let value): .guestReport(vcpu: vcpu, kind: .known(kind), value: value)
        }
    }
}
