import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// The `/dev/kvm` handle: system ioctls, and the factory for VMs.
///
/// Like rust-vmm's `Kvm`, it owns its file descriptor and closes it when released.
public final class KVMSystem: Sendable {
    public static let defaultPath = "/dev/kvm"

    public let path: String
    let fd: OwnedFileDescriptor

    /// Opens the KVM device read-write, close-on-exec.
    ///
    /// The corresponding C function is `open`; the error's operation is `open /dev/kvm`.
    public init(path: String = KVMSystem.defaultPath) throws(KVMError) {
        let raw = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if raw < 0 { throw KVMError.last("open \(path)") }
        self.path = path
        self.fd = OwnedFileDescriptor(adopting: raw)
    }

    /// The KVM API version; 12 on every kernel that has ever shipped KVM.
    ///
    /// The corresponding ioctl is `KVM_GET_API_VERSION`.
    public func apiVersion() throws(KVMError) -> Int {
        Int(try fd.ioctl(KVMIoctl.getAPIVersion))
    }

    /// What the kernel says about `capability` for the system as a whole (0: absent).
    ///
    /// The corresponding ioctl is `KVM_CHECK_EXTENSION`.
    public func check(_ capability: Capability) throws(KVMError) -> Int {
        Int(try fd.ioctl(KVMIoctl.checkExtension, value: capability.rawValue, context: capability.name))
    }

    /// The size of the shared `kvm_run` area each vCPU maps.
    ///
    /// The corresponding ioctl is `KVM_GET_VCPU_MMAP_SIZE`.
    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try fd.ioctl(KVMIoctl.getVCPUMmapSize))
    }

    /// The machine-check capabilities the host can emulate (a `MCG_CAP` value).
    ///
    /// The corresponding ioctl is `KVM_X86_GET_MCE_CAP_SUPPORTED`.
    public func supportedMCGCap() throws(KVMError) -> UInt64 {
        var value: UInt64 = 0
        try fd.ioctl(KVMIoctl.getMCECapSupported, &value)
        return value
    }

    /// Creates a VM of `type`.
    ///
    /// The corresponding ioctl is `KVM_CREATE_VM`.
    public func createVM(type: VMType = .default) throws(KVMError) -> VirtualMachine {
        let raw = try fd.ioctl(KVMIoctl.createVM, value: type.rawValue, context: type.name)
        return VirtualMachine(fd: OwnedFileDescriptor(adopting: raw), type: type, system: self)
    }
}
