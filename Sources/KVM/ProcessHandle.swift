import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A process as a pidfd (pidfd_open): it names that process, never a later one given the same PID, says when it
/// has ended, and lends its file descriptors (`duplicate`).
public final class ProcessHandle: Sendable {
    public let pid: Int32
    private let fd: OwnedFileDescriptor

    /// Nil when the process is gone already, or the kernel has no pidfd_open (before 5.3).
    public init?(pid: Int32) {
        let raw = ckvm_pidfd_open(pid)
        guard raw >= 0 else { return nil }
        self.pid = pid
        fd = OwnedFileDescriptor(adopting: raw)
    }

    /// True once the process has ended (a pidfd becomes readable then, zombie or reaped).
    public var hasExited: Bool {
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) != 0
    }

    /// The process's file descriptor `other`, duplicated into this one (pidfd_getfd); -1 with errno on failure.
    public func duplicate(_ other: Int32) -> Int32 { ckvm_pidfd_getfd(fd.rawValue, other) }
}
