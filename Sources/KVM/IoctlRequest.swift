import CKVM

/// One ioctl request number with the name KVM's documentation uses for it.
///
/// Request numbers are computed the way `<asm-generic/ioctl.h>` does (`_IO`, `_IOR`, `_IOW`, `_IOWR`)
/// from the argument's size, so a hand-written struct of the wrong size gives a wrong number; the tests
/// compare every number with the value documented in `kvm-facts.md`.
public struct IoctlRequest: Sendable, Equatable, CustomStringConvertible {
    public let name: String
    public let value: UInt

    public var description: String { name }

    /// Directions as `_IOC_NONE`, `_IOC_WRITE` (userspace writes) and `_IOC_READ` (userspace reads).
    enum Direction: UInt {
        case none = 0, write = 1, read = 2, readWrite = 3
    }

    /// `_IOC(dir, KVMIO, nr, size)` with `KVMIO` = 0xAE.
    init(_ name: String, _ direction: Direction, _ number: UInt, size: Int = 0) {
        precondition(size < (1 << 14), "ioctl argument too large for _IOC")
        self.name = name
        self.value = (direction.rawValue << 30) | (UInt(size) << 16) | (0xAE << 8) | number
    }
}

/// The KVM ioctls vmscope issues, named as in `Documentation/virt/kvm/api.rst`.
public enum KVMIoctl {
    // System ioctls (/dev/kvm).
    public static let getAPIVersion = IoctlRequest("KVM_GET_API_VERSION", .none, 0x00)
    public static let createVM = IoctlRequest("KVM_CREATE_VM", .none, 0x01)
    public static let checkExtension = IoctlRequest("KVM_CHECK_EXTENSION", .none, 0x03)
    public static let getVCPUMmapSize = IoctlRequest("KVM_GET_VCPU_MMAP_SIZE", .none, 0x04)
    public static let getMCECapSupported = IoctlRequest(
        "KVM_X86_GET_MCE_CAP_SUPPORTED", .read, 0x9D, size: MemoryLayout<UInt64>.size)

    // VM ioctls.
    public static let createVCPU = IoctlRequest("KVM_CREATE_VCPU", .none, 0x41)
    public static let setTSSAddr = IoctlRequest("KVM_SET_TSS_ADDR", .none, 0x47)
    public static let setUserMemoryRegion2 = IoctlRequest(
        "KVM_SET_USER_MEMORY_REGION2", .write, 0x49, size: MemoryLayout<ckvm_userspace_memory_region2>.size)
    public static let enableCap = IoctlRequest(
        "KVM_ENABLE_CAP", .write, 0xA3, size: MemoryLayout<kvm_enable_cap>.size)
    public static let getStatsFD = IoctlRequest("KVM_GET_STATS_FD", .none, 0xCE)
    public static let setMemoryAttributes = IoctlRequest(
        "KVM_SET_MEMORY_ATTRIBUTES", .write, 0xD2, size: MemoryLayout<ckvm_memory_attributes>.size)
    public static let createGuestMemfd = IoctlRequest(
        "KVM_CREATE_GUEST_MEMFD", .readWrite, 0xD4, size: MemoryLayout<ckvm_create_guest_memfd>.size)

    // vCPU ioctls.
    public static let run = IoctlRequest("KVM_RUN", .none, 0x80)
    public static let getRegs = IoctlRequest("KVM_GET_REGS", .read, 0x81, size: MemoryLayout<kvm_regs>.size)
    public static let setRegs = IoctlRequest("KVM_SET_REGS", .write, 0x82, size: MemoryLayout<kvm_regs>.size)
    public static let getSregs = IoctlRequest("KVM_GET_SREGS", .read, 0x83, size: MemoryLayout<kvm_sregs>.size)
    public static let setSregs = IoctlRequest("KVM_SET_SREGS", .write, 0x84, size: MemoryLayout<kvm_sregs>.size)
    public static let nmi = IoctlRequest("KVM_NMI", .none, 0x9A)
    public static let setGuestDebug = IoctlRequest(
        "KVM_SET_GUEST_DEBUG", .write, 0x9B, size: MemoryLayout<kvm_guest_debug>.size)
    public static let setupMCE = IoctlRequest("KVM_X86_SETUP_MCE", .write, 0x9C, size: MemoryLayout<UInt64>.size)
    public static let setMCE = IoctlRequest("KVM_X86_SET_MCE", .write, 0x9E, size: MemoryLayout<kvm_x86_mce>.size)
}
