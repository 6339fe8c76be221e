/// Why `KVM_RUN` returned, with the data KVM attached.
///
/// As in rust-vmm's `VcpuExit`, buffers for the "in" directions (`ioIn`, `mmioRead`) point into the vCPU's
/// `kvm_run` page: fill them before the next `run()`. Every buffer is valid only until that next `run()`.
public enum VCPUExit {
    /// `KVM_EXIT_IO`, guest `out`/`outs`: `data` holds `size * count` bytes.
    case ioOut(port: UInt16, size: Int, count: Int, data: UnsafeRawBufferPointer)
    /// `KVM_EXIT_IO`, guest `in`/`ins`: write `size * count` bytes into `buffer`.
    case ioIn(port: UInt16, size: Int, count: Int, buffer: UnsafeMutableRawBufferPointer)
    /// `KVM_EXIT_MMIO` read: write the value into `buffer` (`len` bytes, at most 8).
    case mmioRead(address: UInt64, buffer: UnsafeMutableRawBufferPointer)
    /// `KVM_EXIT_MMIO` write.
    case mmioWrite(address: UInt64, data: UnsafeRawBufferPointer)
    /// `KVM_EXIT_HYPERCALL`: answer with `VCPU.setHypercallResult(_:)` before the next run.
    case hypercall(Hypercall)
    /// `KVM_EXIT_HLT`.
    case hlt
    /// `KVM_EXIT_SHUTDOWN` (on x86: a triple fault).
    case shutdown
    /// `KVM_EXIT_DEBUG` (single step or breakpoint).
    case debug
    /// `KVM_EXIT_FAIL_ENTRY`.
    case failEntry(hardwareReason: UInt64, cpu: UInt32)
    /// `KVM_EXIT_INTERNAL_ERROR`.
    case internalError(suberror: UInt32, data: [UInt64])
    /// `KVM_EXIT_SYSTEM_EVENT`.
    case systemEvent(type: UInt32, data: [UInt64])
    /// `KVM_RUN` returned -1 with errno `EFAULT`/`EHWPOISON` and `KVM_EXIT_MEMORY_FAULT`.
    case memoryFault(MemoryFaultExit)
    /// `KVM_RUN` returned -1 with `EINTR`/`EAGAIN` (a signal or `immediate_exit`), or `KVM_EXIT_INTR`.
    case interrupted
    /// Any other exit reason, unhandled.
    case other(ExitReason)

    /// `KVM_INTERNAL_ERROR_EMULATION`: the instruction could not be emulated (e.g. fetched from MMIO).
    public static let emulationFailure: UInt32 = 1

    /// The UAPI name of an internal-error suberror.
    public static func internalErrorName(_ s: UInt32) -> String {
        switch s {
        case 1: "EMULATION"
        case 2: "SIMUL_EX"
        case 3: "DELIVERY_EV"
        case 4: "UNEXPECTED_EXIT_REASON"
        default: "suberror \(s)"
        }
    }

    /// The exit reason this exit came from.
    public var reason: ExitReason {
        switch self {
        case .ioOut, .ioIn: .io
        case .mmioRead, .mmioWrite: .mmio
        case .hypercall: .hypercall
        case .hlt: .hlt
        case .shutdown: .shutdown
        case .debug: .debug
        case .failEntry: .failEntry
        case .internalError: .internalError
        case .systemEvent: .systemEvent
        case .memoryFault: .memoryFault
        case .interrupted: .intr
        case .other(let r): r
        }
    }
}

/// `kvm_run.hypercall` of a `KVM_EXIT_HYPERCALL`.
public struct Hypercall: Sendable, Equatable {
    public var number: UInt64
    public var args: [UInt64]
    public var flags: UInt64

    /// `KVM_HC_MAP_GPA_RANGE`.
    public static let mapGPARange: UInt64 = 12
}

/// The fields of `kvm_run.memory_fault`, valid only because `KVM_RUN` said so (errno + exit reason 39).
public struct MemoryFaultExit: Sendable, Equatable {
    /// Raw `memory_fault.flags`; bit 3 is `KVM_MEMORY_EXIT_FLAG_PRIVATE`.
    public var flags: UInt64
    public var gpa: UInt64
    public var size: UInt64
    /// `EFAULT` or `EHWPOISON`.
    public var errno: Errno

    public static let flagPrivate: UInt64 = 1 << 3
    public var isPrivate: Bool { flags & Self.flagPrivate != 0 }
}
