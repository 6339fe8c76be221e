import Schema
import KVM

/// One line of `vmscope caps`: a capability, what the kernel answered, and what vmscope does with it.
public struct CapabilityPlanItem: Sendable, Equatable {
    public var capability: String
    public var value: String
    public var consequence: String
}

/// Turns a capability probe into what vmscope will do on this kernel.
public enum CapabilityPlan {
    public static func items(_ c: KVMCapabilities) -> [CapabilityPlanItem] {
        let decision = try? AttributeEngineDecision.decide(.auto, capabilities: c)
        let engine = decision.map { "attribute engine: \($0.engine.rawValue) (\($0.reason))" } ?? "attribute engine: none"
        let perType = c.perVMType.map { t in
            t.created ? "\(t.type.rawValue): \(hex(t.memoryAttributes))" : "\(t.type.rawValue): not created (\(t.createErrno?.name ?? "?"))"
        }.joined(separator: ", ")
        let types = c.vmTypes.map(\.name).joined(separator: ", ")
        var items: [CapabilityPlanItem] = [
            .init(capability: "KVM_GET_API_VERSION", value: "\(c.apiVersion)",
                  consequence: c.apiVersion == 12 ? "supported" : "unexpected API version: vmscope expects 12"),
            .init(capability: "KVM_CAP_VM_TYPES", value: "\(hex(c.vmTypesMask)) (\(types))",
                  consequence: "VM type \(decision?.vmType.rawValue ?? 0) (\(decision?.vmType.name ?? VMType.default.name))"),
            .init(capability: "KVM_CAP_USER_MEMORY2", value: c.userMemory2 ? "1" : "0",
                  consequence: c.userMemory2 ? "every memslot via KVM_SET_USER_MEMORY_REGION2"
                                             : "cannot bind guest_memfd: the VMM will not start"),
            .init(capability: "KVM_CAP_GUEST_MEMFD", value: c.guestMemfd ? "1" : "0",
                  consequence: c.guestMemfd ? "private RAM kept in a guest_memfd"
                                            : "private RAM falls back to a memfd (reported as such)"),
            .init(capability: "KVM_CAP_GUEST_MEMFD_FLAGS", value: "\(hex(c.guestMemfdFlags.rawValue)) \(c.guestMemfdFlags.names.joined(separator: "|"))",
                  consequence: c.guestMemfdFlags.contains(.mmap)
                      ? "guest_memfd mapped by the VMM (read-memory, integrity checks)"
                      : "guest_memfd not mappable: private pages unreadable from the host"),
            .init(capability: "KVM_CAP_MEMORY_ATTRIBUTES", value: "\(hex(c.memoryAttributes)) (per type \(perType))",
                  consequence: engine),
            .init(capability: "KVM_CAP_MEMORY_FAULT_INFO", value: c.memoryFaultInfo ? "1" : "0",
                  consequence: decision?.engine == .kernel ? "fault records from KVM_EXIT_MEMORY_FAULT (source kernel)"
                      : "decoded if KVM_EXIT_MEMORY_FAULT occurs; faults come from the vmm engine (source vmm, exit MMIO)"),
            .init(capability: "KVM_CAP_EXIT_HYPERCALL", value: hex(c.exitHypercallMask),
                  consequence: c.mapGPARangeHypercall
                      ? ((try? VMBuilder.requestInstruction(.auto, capabilities: c, cpu: HostCPU.virtualization())) != .doorbell
                          ? "KVM_HC_MAP_GPA_RANGE exits enabled; the built-in guest asks by hypercall (--guest-requests)"
                          : "KVM_HC_MAP_GPA_RANGE exits enabled; the built-in guest asks by the doorbell port (no hardware KVM to run hypercalls)")
                      : "guest conversion requests through the doorbell port only"),
            .init(capability: "KVM_CAP_BINARY_STATS_FD", value: c.binaryStatsFD ? "1" : "0",
                  consequence: c.binaryStatsFD ? "VM and vCPU stats shown in the vCPU view" : "no KVM stats shown"),
            .init(capability: "KVM_CAP_NR_MEMSLOTS", value: "\(c.nrMemslots)",
                  consequence: "vmm engine: conversions refused up front beyond \(c.nrMemslots) memslots (one per attribute run)"),
            .init(capability: "KVM_CAP_MCE", value: "\(c.mceBanks) banks, mcg_cap \(c.mcgCapSupported.map(hex) ?? "unknown")",
                  consequence: c.mceBanks > 0 ? "inject-fault mce via KVM_X86_SETUP_MCE + KVM_X86_SET_MCE"
                                              : "inject-fault mce answers Unsupported"),
            .init(capability: "KVM_CAP_IMMEDIATE_EXIT", value: c.immediateExit ? "1" : "0",
                  consequence: c.immediateExit ? "pause/resume/step via kvm_run.immediate_exit"
                                               : "pause waits for the vCPU's next exit"),
            .init(capability: "KVM_CAP_DIRTY_LOG_RING", value: "\(c.dirtyRingMaxBytes) bytes",
                  consequence: "not used by vmscope"),
            .init(capability: "KVM_CAP_PRE_FAULT_MEMORY", value: c.preFaultMemory ? "1" : "0",
                  consequence: "not used by vmscope"),
        ]
        if c.maxVCPUs > 0 {
            items.append(.init(capability: "KVM_CAP_MAX_VCPUS", value: "\(c.maxVCPUs)", consequence: "upper bound for --vcpus"))
        }
        return items
    }
}
