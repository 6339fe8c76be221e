import KVM
import Schema

/// What the user asked for with `--attribute-engine`.
public enum AttributeEngineRequest: String, Sendable, CaseIterable, Codable {
    case auto, kernel, vmm
}

/// The engine and VM type the VMM will use, and why, in words a user can act on.
public struct AttributeEngineDecision: Sendable, Equatable {
    public var engine: AttributeEngineKind
    public var vmType: VMType
    public var reason: String
}

/// Why the requested engine cannot run on this kernel; `description` names the missing capability.
public struct EngineUnsupported: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
}

extension AttributeEngineDecision {
    /// Picks the engine for `request` from the probed capabilities.
    ///
    /// `auto` takes the kernel engine where a VM type reports `KVM_MEMORY_ATTRIBUTE_PRIVATE` (and guest_memfd
    /// exists), the vmm engine otherwise. `kernel` where the kernel lacks it is an error naming what is missing.
    public static func decide(_ request: AttributeEngineRequest, capabilities caps: KVMCapabilities)
        throws(EngineUnsupported) -> AttributeEngineDecision
    {
        let kernelType = caps.userMemory2 ? caps.privateMemoryVMType.flatMap { caps.guestMemfd(on: $0) ? $0 : nil } : nil
        switch (request, kernelType) {
        case (.kernel, let type?), (.auto, let type?):
            return AttributeEngineDecision(
                engine: .kernel, vmType: type,
                reason: "\(type.name) reports KVM_MEMORY_ATTRIBUTE_PRIVATE")
        case (.kernel, nil):
            throw EngineUnsupported(description: "attribute engine kernel: \(kernelMissing(caps))")
        case (.auto, nil):
            return AttributeEngineDecision(engine: .vmm, vmType: .default,
                                           reason: "kernel engine unavailable: \(kernelMissing(caps))")
        case (.vmm, _):
            return AttributeEngineDecision(engine: .vmm, vmType: .default, reason: "requested with --attribute-engine vmm")
        }
    }

    /// The first thing the kernel engine needs that this kernel lacks, naming the capability (the words of the
    /// refusal; tests ask it for the capability their machine lacks).
    public static func kernelMissing(_ caps: KVMCapabilities) -> String {
        if !caps.userMemory2 { return "kernel lacks KVM_CAP_USER_MEMORY2" }
        if !caps.guestMemfd { return "kernel lacks KVM_CAP_GUEST_MEMFD" }
        if let type = caps.privateMemoryVMType, !caps.guestMemfd(on: type) {
            return "kernel lacks KVM_CAP_GUEST_MEMFD on \(type.name)"
        }
        let offered = caps.vmTypes.map(\.name).joined(separator: ", ")
        return "kernel lacks KVM_CAP_MEMORY_ATTRIBUTES (PRIVATE) on every offered VM type (\(offered));"
            + " KVM_X86_SW_PROTECTED_VM needs CONFIG_KVM_SW_PROTECTED_VM, SNP/TDX need the hardware"
    }
}
