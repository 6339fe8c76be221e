import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A VM file descriptor: memslots, memory attributes, guest_memfd, vCPUs, VM-wide stats.
///
/// Like rust-vmm's `VmFd`. The handle keeps its `KVMSystem` alive for the `kvm_run` mapping size.
public final class VirtualMachine: Sendable {
    public let type: VMType
    public let fd: OwnedFileDescriptor
    public let system: KVMSystem

    init(fd: OwnedFileDescriptor, type: VMType, system: KVMSystem) {
        self.fd = fd
        self.type = type
        self.system = system
    }

    /// Closes the VM file descriptor now (vCPUs and guest_memfds keep the VM alive in the kernel).
    public func close() { fd.close() }

    /// What the kernel says about `capability` for this VM (VM-specific answers, e.g. memory attributes).
    ///
    /// The corresponding ioctl is `KVM_CHECK_EXTENSION` on the VM fd.
    public func check(_ capability: Capability) throws(KVMError) -> Int {
        Int(try fd.ioctl(KVMIoctl.checkExtension, value: capability.rawValue, context: capability.name))
    }

    /// Creates, changes or (with `size` 0) deletes a memslot.
    ///
    /// The corresponding ioctl is `KVM_SET_USER_MEMORY_REGION2`.
    public func setUserMemoryRegion(_ region: MemoryRegion) throws(KVMError) {
        var uapi = region.uapi
        try fd.ioctl(KVMIoctl.setUserMemoryRegion2, &uapi, context: region.summary)
    }

    /// Deletes memslot `slot` of address space `addressSpace`.
    public func deleteMemoryRegion(slot: UInt16, addressSpace: UInt16 = 0) throws(KVMError) {
        try setUserMemoryRegion(MemoryRegion(slot: slot, addressSpace: addressSpace, guestPhysicalAddress: 0,
                                             size: 0, userspaceAddress: 0))
    }

    /// Sets the attributes of `[address, address+size)`; all-or-nothing in the kernel.
    ///
    /// The corresponding ioctl is `KVM_SET_MEMORY_ATTRIBUTES`.
    public func setMemoryAttributes(address: UInt64, size: UInt64, attributes: MemoryAttributes) throws(KVMError) {
        var uapi = ckvm_memory_attributes(address: address, size: size, attributes: attributes.rawValue, flags: 0)
        try fd.ioctl(KVMIoctl.setMemoryAttributes, &uapi,
                     context: "gpa 0x\(String(address, radix: 16)) size 0x\(String(size, radix: 16)) attributes 0x\(String(attributes.rawValue, radix: 16))")
    }

    /// Creates a guest_memfd of `size` bytes for this VM.
    ///
    /// The corresponding ioctl is `KVM_CREATE_GUEST_MEMFD`.
    public func createGuestMemfd(size: UInt64, flags: GuestMemfdFlags = []) throws(KVMError) -> GuestMemfd {
        var uapi = ckvm_create_guest_memfd()
        uapi.size = size
        uapi.flags = flags.rawValue
        let raw = try fd.ioctl(KVMIoctl.createGuestMemfd, &uapi,
                               context: "size 0x\(String(size, radix: 16)) flags \(flags.names)")
        return GuestMemfd(fd: OwnedFileDescriptor(adopting: raw), size: size, flags: flags)
    }

    /// Enables a VM capability with up to four arguments.
    ///
    /// The corresponding ioctl is `KVM_ENABLE_CAP` on the VM fd.
    public func enable(_ capability: Capability, args: [UInt64] = []) throws(KVMError) {
        precondition(args.count <= 4)
        var uapi = kvm_enable_cap()
        uapi.cap = UInt32(capability.rawValue)
        withUnsafeMutableBytes(of: &uapi.args) { raw in
            for (i, a) in args.enumerated() { raw.storeBytes(of: a, toByteOffset: i * 8, as: UInt64.self) }
        }
        try fd.ioctl(KVMIoctl.enableCap, &uapi, context: capability.name)
    }

    /// Creates vCPU `id` and maps its `kvm_run` area.
    ///
    /// The corresponding ioctl is `KVM_CREATE_VCPU`.
    public func createVCPU(id: Int) throws(KVMError) -> VCPU {
        let mmapSize = try system.vcpuMmapSize()
        let raw = try fd.ioctl(KVMIoctl.createVCPU, value: UInt(id), context: "vcpu \(id)")
        let owned = OwnedFileDescriptor(adopting: raw)
        guard let run = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, raw, 0), run != MAP_FAILED else {
            throw KVMError.last("mmap kvm_run", "vcpu \(id)")
        }
        return VCPU(id: id, fd: owned, runArea: run, runSize: mmapSize, vm: self)
    }

    /// Opens the VM's binary statistics.
    ///
    /// The corresponding ioctl is `KVM_GET_STATS_FD` on the VM fd.
    public func statistics() throws(KVMError) -> BinaryStats {
        let raw = try fd.ioctl(KVMIoctl.getStatsFD)
        return try BinaryStats(fd: OwnedFileDescriptor(adopting: raw))
    }
}
