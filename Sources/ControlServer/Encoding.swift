import CKVM
import ControlProtocol
import KVM
import VMM

/// The control protocol's JSON for the VMM's values (docs/control-protocol.md).
enum Encode {
    static func record(_ r: FaultRecord) -> JSON {
        .object([
            ("seq", .u(r.seq)), (Wire.timeNs.name, .u(r.timeNs)), ("vcpu", .opt(r.vcpu.map(JSON.i))),
            ("gpa", .u(r.gpa)), ("size", .u(r.size)), ("flags", .u(r.flags)), ("private", .bool(r.isPrivate)),
            ("access", .string(r.access.rawValue)), ("errno", .opt(r.errno.map(JSON.string))),
            ("source", .string(r.source.rawValue)), ("exit", .string(r.exit)), ("attribute", .string(r.attribute)),
            ("slot", .opt(r.slot.map(JSON.i))), ("action", .string(r.action.rawValue)),
        ])
    }

    /// `query-memory-faults`' reply (also `query-snapshot`'s `faults`).
    static func faults(_ records: [FaultRecord], total: UInt64, dropped: UInt64) -> JSON {
        .object([("records", .array(records.map(record))), ("total", .u(total)), ("dropped", .u(dropped))])
    }

    static func memslot(_ m: MemslotInfo) -> JSON {
        .object([
            ("slot", .i(m.slot)), ("as-id", .i(m.addressSpace)), ("gpa", .u(m.gpa)), ("size", .u(m.size)),
            ("flags", .u(UInt64(m.flags.rawValue))), ("flag-names", .array(m.flags.names.map(JSON.string))),
            ("view", .string(m.view.rawValue)), ("backing", .string(m.backing.rawValue)),
            ("guest-memfd-offset", .opt(m.guestMemfdOffset.map(JSON.u))), ("userspace-addr", .u(m.userspaceAddress)),
        ])
    }

    static func attributes(_ q: AttributeQuery) -> JSON {
        .object([
            ("runs", .array(q.runs.map { .object([("gpa", .u($0.gpa)), ("size", .u($0.size)), ("private", .bool($0.isPrivate))]) })),
            (Wire.privateBytes.name, .u(q.privateBytes)), ("shared-bytes", .u(q.sharedBytes)),
        ])
    }

    static func counts(_ m: [String: UInt64]) -> JSON {
        .object(m.sorted { $0.key < $1.key }.map { ($0.key, .u($0.value)) })
    }

    static func registers(_ r: kvm_regs) -> JSON {
        .object([
            ("rax", .u(r.rax)), ("rbx", .u(r.rbx)), ("rcx", .u(r.rcx)), ("rdx", .u(r.rdx)), ("rsi", .u(r.rsi)),
            ("rdi", .u(r.rdi)), ("rsp", .u(r.rsp)), ("rbp", .u(r.rbp)), ("r8", .u(r.r8)), ("r9", .u(r.r9)),
            ("r10", .u(r.r10)), ("r11", .u(r.r11)), ("r12", .u(r.r12)), ("r13", .u(r.r13)), ("r14", .u(r.r14)),
            ("r15", .u(r.r15)), ("rip", .u(r.rip)), ("rflags", .u(r.rflags)),
        ])
    }

    static func segment(_ s: kvm_segment) -> JSON {
        .object([
            ("selector", .u(UInt64(s.selector))), ("base", .u(s.base)), ("limit", .u(UInt64(s.limit))),
            ("type", .u(UInt64(s.type))), ("dpl", .u(UInt64(s.dpl))), ("db", .u(UInt64(s.db))), ("l", .u(UInt64(s.l))),
        ])
    }

    static func specialRegisters(_ s: kvm_sregs) -> JSON {
        .object([
            ("cr0", .u(s.cr0)), ("cr2", .u(s.cr2)), ("cr3", .u(s.cr3)), ("cr4", .u(s.cr4)), ("efer", .u(s.efer)),
            ("cs", segment(s.cs)), ("ds", segment(s.ds)), ("es", segment(s.es)), ("fs", segment(s.fs)),
            ("gs", segment(s.gs)), ("ss", segment(s.ss)),
        ])
    }

    static func guest(_ g: GuestCounters) -> JSON {
        .object([
            ("heartbeat", .u(g.heartbeat)), ("heartbeats", .u(g.heartbeats)), ("integrity-errors", .u(g.integrityErrors)),
            ("bounce-errors", .u(g.bounceErrors)), ("mce-seen", .u(g.mceSeen)), ("nmi-seen", .u(g.nmiSeen)),
            ("exceptions", .u(g.exceptions)), ("doorbell-requests", .u(g.doorbellRequests)),
            ("doorbell-failures", .u(g.doorbellFailures)),
        ])
    }

    static func vcpu(_ v: VCPUSnapshot) -> JSON {
        .object([
            ("index", .i(v.index)), ("thread-id", .i(Int(v.threadID))), ("state", .string(v.state.rawValue)),
            ("last-exit", .string(v.lastExit)), ("exit-counts", counts(v.exitCounts)),
            ("regs", .opt(v.registers.map(registers))), ("sregs", .opt(v.specialRegisters.map(specialRegisters))),
            ("stats", counts(v.statistics)),
            // vmscope extension: why the vCPU is in state error (the exit and its data), else null.
            ("error", .opt(v.errorDetail.map(JSON.string))),
            // vmscope extension: what the built-in guest reported on its ports.
            ("guest", guest(v.guest)),
        ])
    }

    static func injection(_ r: InjectionReport) -> JSON {
        .object([
            ("kind", .string(r.kind.rawValue)), ("vcpu", .opt(r.vcpu.map(JSON.i))), ("gpa", .opt(r.gpa.map(JSON.u))),
            ("size", .opt(r.size.map(JSON.u))), ("detail", .string(r.detail)),
        ])
    }

    static func capabilities(_ c: KVMCapabilities) -> JSON {
        .object([
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
        ])
    }

    static func event(_ e: VMEvent) -> (name: String, data: JSON) {
        switch e {
        case .memoryAttributesChanged(let gpa, let size, let isPrivate, let cause, let vcpu):
            ("MEMORY_ATTRIBUTES_CHANGED", .object([
                ("gpa", .u(gpa)), ("size", .u(size)), ("private", .bool(isPrivate)), ("cause", .string(cause.rawValue)),
                ("vcpu", .opt(vcpu.map(JSON.i))),
            ]))
        case .memslotsChanged(let generation):
            ("MEMSLOTS_CHANGED", .object([("generation", .u(generation))]))
        case .vcpuStateChanged(let index, let state, let reason):
            ("VCPU_STATE_CHANGED", .object([("index", .i(index)), ("state", .string(state.rawValue)), ("reason", .string(reason))]))
        case .faultInjected(let report):
            ("FAULT_INJECTED", injection(report))
        case .guestReport(let vcpu, let kind, let value):
            ("GUEST_REPORT", .object([("vcpu", .i(vcpu)), ("kind", .string(kind)), ("value", .u(value))]))
        }
    }
}
