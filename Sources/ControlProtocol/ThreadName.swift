import Foundation

/// Names the calling thread in the kernel (`/proc/PID/task/TID/comm`, what `top -H`, `ps -L` and perf show); the
/// kernel keeps at most 15 bytes. Foundation's `Thread.name` is not that on Linux: a thread starts with its
/// creator's name (under a test runner, a worker's "…default-qos"), and the name Foundation set did not always
/// reach the kernel (two runs of six).
public func nameCurrentThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}
