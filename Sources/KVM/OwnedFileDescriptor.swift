import CKVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A file descriptor that its owner closes: on `close()` or, at the latest, when the owner goes away.
///
/// Once closed, the descriptor reads as -1, so a later ioctl fails with `EBADF` instead of reaching
/// whatever file reused the number.
public final class OwnedFileDescriptor: Sendable {
    private let raw: Atomic<Int32>

    /// Takes ownership of `rawValue`.
    public init(adopting rawValue: Int32) {
        raw = Atomic(rawValue)
    }

    /// The descriptor, or -1 once closed.
    public var rawValue: Int32 { raw.load(ordering: .acquiring) }

    public var isClosed: Bool { rawValue < 0 }

    /// Closes the descriptor now; later calls do nothing.
    public func close() {
        let old = raw.exchange(-1, ordering: .acquiringAndReleasing)
        if old >= 0 { _ = Glibc.close(old) }
    }

    deinit { close() }

    /// `ioctl(fd, request, arg)` with a pointer argument, retried on `EINTR` unless `retryOnInterrupt` is false.
    @discardableResult
    func ioctl(_ request: IoctlRequest, _ arg: UnsafeMutableRawPointer?, context: @autoclosure () -> String = "",
               retryOnInterrupt: Bool = true) throws(KVMError) -> Int32 {
        while true {
            let result = ckvm_ioctl_ptr(rawValue, request.value, arg)
            if result >= 0 { return result }
            if Glibc.errno == EINTR && retryOnInterrupt { continue }
            throw KVMError.last(request.name, context())
        }
    }

    /// `ioctl(fd, request, value)` with an integer argument, retried on `EINTR`.
    @discardableResult
    func ioctl(_ request: IoctlRequest, value: UInt = 0, context: @autoclosure () -> String = "") throws(KVMError) -> Int32 {
        while true {
            let result = ckvm_ioctl_val(rawValue, request.value, value)
            if result >= 0 { return result }
            if Glibc.errno == EINTR { continue }
            throw KVMError.last(request.name, context())
        }
    }

    /// `ioctl` with a typed in/out argument.
    @discardableResult
    func ioctl<T>(_ request: IoctlRequest, _ arg: inout T, context: @autoclosure () -> String = "") throws(KVMError) -> Int32 {
        let ctx = context()
        return try withUnsafeMutableBytes(of: &arg) { (buffer) throws(KVMError) -> Int32 in
            try ioctl(request, buffer.baseAddress, context: ctx)
        }
    }
}
