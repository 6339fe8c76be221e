/// What the running kernel's KVM offers vmscope: one probe, as a value.
public struct KVMCapabilities: Sendable, Equatable {
    /// Per-VM-type answers that differ between machine types.
    public struct PerVMType: Sendable, Equatable {
        public var type: VMType
        /// False when `KVM_CREATE_VM` refused the type; the other fields are then zero.
        public var created: Bool
        /// `KVM_CAP_MEMORY_ATTRIBUTES` on that VM: the attribute bits it supports (bit 3 = PRIVATE).
        public var memoryAttributes: UInt64
        /// `KVM_CAP_GUEST_MEMFD_FLAGS` on that VM.
        public var guestMemfdFlags: GuestMemfdFlags
        /// errno of the failed `KVM_CREATE_VM`, if any.
        public var createErrno: Errno?
        /// `KVM_CAP_GUEST_MEMFD` on that VM (Linux 6.12 answers 1 on the system fd and 0 on a type-0 VM); nil where
        /// not asked, then the system fd's answer stands.
        public var guestMemfd: Bool? = nil

        public var supportsPrivateAttribute: Bool { memoryAttributes & MemoryAttributes.private.rawValue != 0 }
    }

    public var apiVersion: Int
    /// `KVM_CAP_VM_TYPES` as a bit mask (0 where the capability is absent: then only type 0 exists).
    public var vmTypesMask: UInt64
    public var userMemory2: Bool
    public var guestMemfd: Bool
    /// `KVM_CAP_GUEST_MEMFD_FLAGS` on the system fd.
    public var guestMemfdFlags: GuestMemfdFlags
    /// `KVM_CAP_MEMORY_ATTRIBUTES` on the system fd.
    public var memoryAttributes: UInt64
    public var memoryFaultInfo: Bool
    /// `KVM_CAP_EXIT_HYPERCALL`: the hypercalls that can exit to userspace (bit 12 = KVM_HC_MAP_GPA_RANGE).
    public var exitHypercallMask: UInt64
    public var binaryStatsFD: Bool
    public var nrMemslots: Int
    public var maxVCPUs: Int
    /// Number of MCE banks KVM emulates (`KVM_CAP_MCE`); 0 if none.
    public var mceBanks: Int
    /// `KVM_X86_GET_MCE_CAP_SUPPORTED`, or nil where that ioctl failed.
    public var mcgCapSupported: UInt64?
    /// `KVM_CAP_DIRTY_LOG_RING`: the largest ring in bytes, 0 if none.
    public var dirtyRingMaxBytes: Int
    public var immediateExit: Bool
    public var preFaultMemory: Bool
    public var setGuestDebug: Bool
    public var perVMType: [PerVMType]

    /// The VM types the kernel offers.
    public var vmTypes: [VMType] {
        vmTypesMask == 0 ? [.default] : VMType.types(inMask: vmTypesMask)
    }

    /// `KVM_HC_MAP_GPA_RANGE` can exit to userspace.
    public var mapGPARangeHypercall: Bool { exitHypercallMask & (1 << Hypercall.mapGPARange) != 0 }

    /// Whether a VM of `type` can create a guest_memfd: that VM's own `KVM_CAP_GUEST_MEMFD` where it was asked.
    public func guestMemfd(on type: VMType) -> Bool {
        guestMemfd && (perVMType.first { $0.type == type }?.guestMemfd ?? true)
    }

    /// `KVM_CAP_GUEST_MEMFD_FLAGS` for a VM of `type` (the system fd's answer where that VM was not asked).
    public func guestMemfdFlags(on type: VMType) -> GuestMemfdFlags {
        guard guestMemfd(on: type) else { return [] }
        return perVMType.first { $0.type == type && $0.created }?.guestMemfdFlags ?? guestMemfdFlags
    }

    /// The first offered VM type whose VM reports the PRIVATE memory attribute, if any.
    public var privateMemoryVMType: VMType? {
        perVMType.first { $0.created && $0.supportsPrivateAttribute }?.type
    }

    /// Probes `system`: capability checks, plus one short-lived VM per offered type for the VM-specific answers.
    public static func probe(_ system: KVMSystem) throws(KVMError) -> KVMCapabilities {
        func cap(_ c: Capability) throws(KVMError) -> Int { try system.check(c) }
        let mask = UInt64(truncatingIfNeeded: try cap(.vmTypes))
        let types = mask == 0 ? [VMType.default] : VMType.types(inMask: mask)
        var perType: [PerVMType] = []
        for type in types {
            do {
                let vm = try system.createVM(type: type)
                perType.append(PerVMType(
                    type: type, created: true,
                    memoryAttributes: UInt64(truncatingIfNeeded: try vm.check(.memoryAttributes)),
                    guestMemfdFlags: GuestMemfdFlags(rawValue: UInt64(truncatingIfNeeded: try vm.check(.guestMemfdFlags))),
                    createErrno: nil, guestMemfd: try vm.check(.guestMemfd) != 0))
            } catch {
                perType.append(PerVMType(type: type, created: false, memoryAttributes: 0, guestMemfdFlags: [],
                                         createErrno: error.errno))
            }
        }
        let mcg: UInt64?
        do { mcg = try system.supportedMCGCap() } catch { mcg = nil }
        return KVMCapabilities(
            apiVersion: try system.apiVersion(),
            vmTypesMask: mask,
            userMemory2: try cap(.userMemory2) != 0,
            guestMemfd: try cap(.guestMemfd) != 0,
            guestMemfdFlags: GuestMemfdFlags(rawValue: UInt64(truncatingIfNeeded: try cap(.guestMemfdFlags))),
            memoryAttributes: UInt64(truncatingIfNeeded: try cap(.memoryAttributes)),
            memoryFaultInfo: try cap(.memoryFaultInfo) != 0,
            exitHypercallMask: UInt64(truncatingIfNeeded: try cap(.exitHypercall)),
            binaryStatsFD: try cap(.binaryStatsFD) != 0,
            nrMemslots: try cap(.nrMemslots),
            maxVCPUs: try cap(.maxVCPUs),
            mceBanks: try cap(.mce),
            mcgCapSupported: mcg,
            dirtyRingMaxBytes: try cap(.dirtyLogRing),
            immediateExit: try cap(.immediateExit) != 0,
            preFaultMemory: try cap(.preFaultMemory) != 0,
            setGuestDebug: try cap(.setGuestDebug) != 0,
            perVMType: perType)
    }
}
