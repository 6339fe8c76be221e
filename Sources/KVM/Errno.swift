import CKVM
@_exported import struct SystemPackage.Errno

/// swift-system's `Errno` is the one errno type from a failed ioctl up to a client's error reply (`KVMError`, the VMM's
/// errors, the reply's `errno` member). Its names (`.invalidArgument`) say what a number would not; its description is
/// the C library's text. What it lacks is the symbolic name (`EINVAL`) people grep a kernel source and a man page for.
extension Errno {
    /// The symbolic name (`EFAULT`), from the C library.
    public var name: String { String(cString: ckvm_errno_name(rawValue)) }
}
