/// A `KVM_CAP_*` number, asked with `KVM_CHECK_EXTENSION` on the system or a VM file descriptor.
public struct Capability: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt
    public let name: String

    public init(rawValue: UInt) {
        self.rawValue = rawValue
        self.name = Capability.known.first { $0.rawValue == rawValue }?.name ?? "KVM_CAP_\(rawValue)"
    }

    init(_ name: String, _ value: UInt) {
        self.rawValue = value
        self.name = name
    }

    public var description: String { name }

    public static func == (a: Capability, b: Capability) -> Bool { a.rawValue == b.rawValue }
    public func hash(into hasher: inout Hasher) { hasher.combine(rawValue) }

    public static let userMemory = Capability("KVM_CAP_USER_MEMORY", 3)
    public static let nrVCPUs = Capability("KVM_CAP_NR_VCPUS", 9)
    public static let nrMemslots = Capability("KVM_CAP_NR_MEMSLOTS", 10)
    public static let setGuestDebug = Capability("KVM_CAP_SET_GUEST_DEBUG", 23)
    public static let mce = Capability("KVM_CAP_MCE", 31)
    public static let ioeventfd = Capability("KVM_CAP_IOEVENTFD", 36)
    public static let maxVCPUs = Capability("KVM_CAP_MAX_VCPUS", 66)
    public static let readonlyMem = Capability("KVM_CAP_READONLY_MEM", 81)
    public static let immediateExit = Capability("KVM_CAP_IMMEDIATE_EXIT", 136)
    public static let dirtyLogRing = Capability("KVM_CAP_DIRTY_LOG_RING", 192)
    public static let exitHypercall = Capability("KVM_CAP_EXIT_HYPERCALL", 201)
    public static let binaryStatsFD = Capability("KVM_CAP_BINARY_STATS_FD", 203)
    public static let userMemory2 = Capability("KVM_CAP_USER_MEMORY2", 231)
    public static let memoryFaultInfo = Capability("KVM_CAP_MEMORY_FAULT_INFO", 232)
    public static let memoryAttributes = Capability("KVM_CAP_MEMORY_ATTRIBUTES", 233)
    public static let guestMemfd = Capability("KVM_CAP_GUEST_MEMFD", 234)
    public static let vmTypes = Capability("KVM_CAP_VM_TYPES", 235)
    public static let preFaultMemory = Capability("KVM_CAP_PRE_FAULT_MEMORY", 236)
    public static let guestMemfdFlags = Capability("KVM_CAP_GUEST_MEMFD_FLAGS", 244)

    public static let known: [Capability] = [
        userMemory, nrVCPUs, nrMemslots, setGuestDebug, mce, ioeventfd, maxVCPUs, readonlyMem, immediateExit,
        dirtyLogRing, exitHypercall, binaryStatsFD, userMemory2, memoryFaultInfo, memoryAttributes, guestMemfd,
        vmTypes, preFaultMemory, guestMemfdFlags,
    ]
}

/// `KVM_CREATE_VM`'s machine type argument on x86.
public struct VMType: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    public static let `default` = VMType(rawValue: 0)
    public static let swProtected = VMType(rawValue: 1)
    public static let sev = VMType(rawValue: 2)
    public static let sevES = VMType(rawValue: 3)
    public static let snp = VMType(rawValue: 4)
    public static let tdx = VMType(rawValue: 5)

    /// The name KVM's headers use, e.g. `KVM_X86_SW_PROTECTED_VM`.
    public var name: String {
        switch rawValue {
        case 0: "KVM_X86_DEFAULT_VM"
        case 1: "KVM_X86_SW_PROTECTED_VM"
        case 2: "KVM_X86_SEV_VM"
        case 3: "KVM_X86_SEV_ES_VM"
        case 4: "KVM_X86_SNP_VM"
        case 5: "KVM_X86_TDX_VM"
        default: "type \(rawValue)"
        }
    }

    public var description: String { name }
    public static func < (a: VMType, b: VMType) -> Bool { a.rawValue < b.rawValue }

    /// The types set in a `KVM_CAP_VM_TYPES` bit mask.
    public static func types(inMask mask: UInt64) -> [VMType] {
        (0..<64).filter { mask & (1 << UInt64($0)) != 0 }.map { VMType(rawValue: UInt($0)) }
    }
}
