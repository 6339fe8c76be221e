import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A vCPU file descriptor and its mapped `kvm_run` area.
///
/// `run()` and the register calls belong to the one thread that drives this vCPU. From other threads only
/// `requestImmediateExit(_:)`, `nmi()` and `injectMCE(_:)` are meant to be used (KVM serialises them against
/// `KVM_RUN` itself).
public final class VCPU: @unchecked Sendable {
    // @unchecked: `run` points into the kernel-shared kvm_run page. Only the vCPU thread reads and writes it,
    // except `immediate_exit`, a single byte that KVM documents as settable from anywhere.
    public let id: Int
    public let fd: OwnedFileDescriptor
    let runArea: UnsafeMutableRawPointer
    let runSize: Int
    /// Keeps the VM file descriptor open while this vCPU exists.
    public let vm: VirtualMachine

    init(id: Int, fd: OwnedFileDescriptor, runArea: UnsafeMutableRawPointer, runSize: Int, vm: VirtualMachine) {
        self.id = id
        self.fd = fd
        self.runArea = runArea
        self.runSize = runSize
        self.vm = vm
    }

    deinit { munmap(runArea, runSize) }

    private var exitUnion: UnsafeMutableRawPointer { runArea.advanced(by: Int(CKVM_RUN_EXIT_UNION_OFFSET)) }

    /// Enters the guest until the next exit.
    ///
    /// The corresponding ioctl is `KVM_RUN`. A memory fault (`-1`, errno `EFAULT`/`EHWPOISON`, exit reason
    /// `KVM_EXIT_MEMORY_FAULT`) is returned as `.memoryFault`, a signal or immediate exit as `.interrupted`;
    /// any other failure throws.
    public func run() throws(KVMError) -> VCPUExit {
        // A stale exit reason must not make a later bare EFAULT look like a memory fault.
        runArea.storeBytes(of: ExitReason.unknown.rawValue, toByteOffset: 8, as: UInt32.self)
        let result = ckvm_ioctl_val(fd.rawValue, KVMIoctl.run.value, 0)
        let reason = ExitReason(rawValue: runArea.load(fromByteOffset: 8, as: UInt32.self))
        if result < 0 {
            let err = Glibc.errno
            if reason == .memoryFault && (err == EFAULT || err == EHWPOISON) {
                let f = exitUnion.load(as: ckvm_run_memory_fault.self)
                return .memoryFault(MemoryFaultExit(flags: f.flags, gpa: f.gpa, size: f.size, errno: Errno(rawValue: err)))
            }
            if err == EINTR || err == EAGAIN { return .interrupted }
            throw KVMError(operation: KVMIoctl.run.name, errno: Errno(rawValue: err), context: "vcpu \(id), exit reason \(reason.name)")
        }
        switch reason {
        case .io:
            let io = exitUnion.load(as: ckvm_run_io.self)
            let bytes = Int(io.size) * Int(io.count)
            let data = runArea.advanced(by: Int(io.data_offset))
            if io.direction == 1 {
                return .ioOut(port: io.port, size: Int(io.size), count: Int(io.count),
                              data: UnsafeRawBufferPointer(start: data, count: bytes))
            }
            return .ioIn(port: io.port, size: Int(io.size), count: Int(io.count),
                         buffer: UnsafeMutableRawBufferPointer(start: data, count: bytes))
        case .mmio:
            let address = exitUnion.load(as: UInt64.self)
            let length = min(8, Int(exitUnion.load(fromByteOffset: 16, as: UInt32.self)))
            let isWrite = exitUnion.load(fromByteOffset: 20, as: UInt8.self) != 0
            let data = exitUnion.advanced(by: 8)
            if isWrite {
                return .mmioWrite(address: address, data: UnsafeRawBufferPointer(start: data, count: length))
            }
            return .mmioRead(address: address, buffer: UnsafeMutableRawBufferPointer(start: data, count: length))
        case .hypercall:
            let h = exitUnion.load(as: ckvm_run_hypercall.self)
            let args = withUnsafeBytes(of: h.args) { Array($0.bindMemory(to: UInt64.self)) }
            return .hypercall(Hypercall(number: h.nr, args: args, flags: h.flags))
        case .hlt: return .hlt
        case .shutdown: return .shutdown
        case .debug: return .debug
        case .intr: return .interrupted
        case .failEntry:
            return .failEntry(hardwareReason: exitUnion.load(as: UInt64.self),
                              cpu: exitUnion.load(fromByteOffset: 8, as: UInt32.self))
        case .internalError:
            let e = exitUnion.load(as: ckvm_run_internal.self)
            return .internalError(suberror: e.suberror, data: words(e.data, count: Int(e.ndata)))
        case .systemEvent:
            let e = exitUnion.load(as: ckvm_run_system_event.self)
            return .systemEvent(type: e.type, data: words(e.data, count: Int(e.ndata)))
        default:
            return .other(reason)
        }
    }

    private func words<T>(_ tuple: T, count: Int) -> [UInt64] {
        withUnsafeBytes(of: tuple) { Array($0.bindMemory(to: UInt64.self).prefix(max(0, min(count, 16)))) }
    }

    /// Answers the pending `KVM_EXIT_HYPERCALL`: the value lands in the guest's RAX on the next run.
    public func setHypercallResult(_ value: UInt64) {
        exitUnion.storeBytes(of: value, toByteOffset: 56, as: UInt64.self)
    }

    /// Sets or clears `kvm_run.immediate_exit`: while set, `KVM_RUN` returns at once with `EINTR`.
    public func requestImmediateExit(_ on: Bool) {
        runArea.storeBytes(of: on ? 1 : 0, toByteOffset: 1, as: UInt8.self)
    }

    /// The corresponding ioctl is `KVM_GET_REGS`.
    public func registers() throws(KVMError) -> kvm_regs {
        var regs = kvm_regs()
        try fd.ioctl(KVMIoctl.getRegs, &regs, context: "vcpu \(id)")
        return regs
    }

    /// The corresponding ioctl is `KVM_SET_REGS`.
    public func setRegisters(_ regs: kvm_regs) throws(KVMError) {
        var copy = regs
        try fd.ioctl(KVMIoctl.setRegs, &copy, context: "vcpu \(id)")
    }

    /// The corresponding ioctl is `KVM_GET_SREGS`.
    public func specialRegisters() throws(KVMError) -> kvm_sregs {
        var sregs = kvm_sregs()
        try fd.ioctl(KVMIoctl.getSregs, &sregs, context: "vcpu \(id)")
        return sregs
    }

    /// The corresponding ioctl is `KVM_SET_SREGS`.
    public func setSpecialRegisters(_ sregs: kvm_sregs) throws(KVMError) {
        var copy = sregs
        try fd.ioctl(KVMIoctl.setSregs, &copy, context: "vcpu \(id)")
    }

    /// Queues an NMI for this vCPU (valid without an in-kernel irqchip).
    ///
    /// The corresponding ioctl is `KVM_NMI`.
    public func nmi() throws(KVMError) {
        try fd.ioctl(KVMIoctl.nmi, value: 0, context: "vcpu \(id)")
    }

    /// Enables machine-check emulation with `mcgCap` (banks in the low byte).
    ///
    /// The corresponding ioctl is `KVM_X86_SETUP_MCE`.
    public func setupMCE(mcgCap: UInt64) throws(KVMError) {
        var value = mcgCap
        try fd.ioctl(KVMIoctl.setupMCE, &value, context: "vcpu \(id) mcg_cap 0x\(String(mcgCap, radix: 16))")
    }

    /// Injects a machine check.
    ///
    /// The corresponding ioctl is `KVM_X86_SET_MCE`.
    public func injectMCE(_ mce: kvm_x86_mce) throws(KVMError) {
        var copy = mce
        try fd.ioctl(KVMIoctl.setMCE, &copy,
                     context: "vcpu \(id) bank \(mce.bank) addr 0x\(String(mce.addr, radix: 16))")
    }

    /// Turns guest debugging (e.g. `KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP`) on or off.
    ///
    /// The corresponding ioctl is `KVM_SET_GUEST_DEBUG`.
    public func setGuestDebug(control: UInt32) throws(KVMError) {
        var dbg = kvm_guest_debug()
        dbg.control = control
        try fd.ioctl(KVMIoctl.setGuestDebug, &dbg, context: "vcpu \(id) control 0x\(String(control, radix: 16))")
    }

    /// Opens this vCPU's binary statistics.
    ///
    /// The corresponding ioctl is `KVM_GET_STATS_FD` on the vCPU fd.
    public func statistics() throws(KVMError) -> BinaryStats {
        let raw = try fd.ioctl(KVMIoctl.getStatsFD)
        return try BinaryStats(fd: OwnedFileDescriptor(adopting: raw))
    }
}
