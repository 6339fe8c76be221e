import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A failed system call on a KVM-related file descriptor: which operation, and the `errno` it left.
///
/// Nothing is invented on top of `errno`: the operation names the ioctl (`KVM_SET_USER_MEMORY_REGION2`)
/// or the libc call (`open /dev/kvm`), `context` says what was being asked where that helps a reader.
public struct KVMError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The ioctl or system call, e.g. `KVM_SET_USER_MEMORY_REGION2`.
    public let operation: String
    /// The `errno` the call left.
    public let errno: Errno
    /// What was being asked, e.g. `slot 1 gpa 0x100000 size 0x1000`, or empty.
    public let context: String

    public init(operation: String, errno: Errno, context: String = "") {
        self.operation = operation
        self.errno = errno
        self.context = context
    }

    /// The symbolic name of `errno`, e.g. `EEXIST`.
    public var errnoName: String { errno.name }

    /// The C library's text for `errno`, e.g. `File exists`.
    public var errnoText: String { String(cString: strerror(errno.rawValue)) }

    public var description: String {
        let what = context.isEmpty ? operation : "\(operation) (\(context))"
        return "\(what) failed: \(errnoName) (\(errnoText))"
    }

    /// The symbolic name of an errno value (`EFAULT`), from the C library.
    public static func name(of errno: Int32) -> String {
        String(cString: ckvm_errno_name(errno))
    }

    /// Captures the current thread's `errno` for `operation`.
    static func last(_ operation: String, _ context: @autoclosure () -> String = "") -> KVMError {
        KVMError(operation: operation, errno: Errno(rawValue: Glibc.errno), context: context())
    }
}
