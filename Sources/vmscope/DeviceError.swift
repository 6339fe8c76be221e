import ArgumentParser
import KVM
#if canImport(Glibc)
import Glibc
#endif

/// The one-line answer when `/dev/kvm` cannot be opened: which device, what went wrong, and how to fix it.
struct DeviceUnavailable: Error, CustomStringConvertible {
    let path: String
    let errno: Errno

    init(_ error: KVMError, path: String) {
        self.path = path
        self.errno = error.errno
    }

    var description: String {
        let why = "\(errno.name) (\(String(cString: strerror(errno.rawValue))))"
        switch errno {
        case .noSuchFileOrDirectory, .noSuchAddressOrDevice, .operationNotSupportedByDevice:   // ENOENT, ENXIO, ENODEV
            return "vmscope: cannot open \(path): \(why); load KVM (modprobe kvm_intel or kvm_amd) or run on a host with KVM"
        case .permissionDenied, .notPermitted:
            return "vmscope: cannot open \(path): \(why); run as root or add yourself to the group that owns it (usually kvm)"
        default:
            return "vmscope: cannot open \(path): \(why)"
        }
    }

    /// Prints the line to stderr and exits with status 2, as every device-level failure does.
    func exit() -> Never {
        var err = StandardError()
        print(description, to: &err)
        Glibc.exit(2)
    }

    /// Opens `path`, or prints the one-line error and exits 2.
    static func openOrExit(_ path: String) -> KVMSystem {
        do { return try KVMSystem(path: path) } catch { DeviceUnavailable(error, path: path).exit() }
    }
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) { _ = writeAll(2, Array(string.utf8)) }
}

/// Writes all of `bytes` to `fd` (again after EINTR and short writes); the errno that stopped it, or nil.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Int32? {
    bytes.withUnsafeBufferPointer { writeAll(fd, $0) }
}

func writeAll(_ fd: Int32, _ bytes: UnsafeBufferPointer<UInt8>) -> Int32? {
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && Glibc.errno == EINTR { continue }
        guard n > 0 else { return n < 0 ? Glibc.errno : EIO }
        done += n
    }
    return nil
}
