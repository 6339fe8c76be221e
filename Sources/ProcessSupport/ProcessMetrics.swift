import Foundation

/// CPU time of a process in seconds, all its threads, with nanosecond resolution (/proc/PID/task/*/schedstat;
/// /proc/PID/stat counts in ticks of 10 ms, too coarse for a process near 1%).
public func cpuSeconds(pid: Int32) -> Double? {
    guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return nil }
    var ns: UInt64 = 0
    for t in tasks {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/schedstat", encoding: .utf8),
              let first = text.split(separator: " ").first, let v = UInt64(first) else { continue }
        ns += v
    }
    return Double(ns) / 1e9
}

/// The fields of /proc/PID/stat after the command's name, from the state on (`[0]` state, `[1]` ppid, `[7]` minflt):
/// the name may hold spaces and parentheses, what follows its last ')' does not. nil when the process is gone.
public func procStatFields(pid: Int32) -> [Substring]? {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
    return stat[stat.index(after: close)...].split(separator: " ")
}

/// Resident set size of a process in bytes: /proc/PID/statm's second number (pages; the counter VmRSS in
/// /proc/PID/status shows in kB), read without splitting the status file into lines (`top` asks for every VM each
/// second, and that was a fifth of a sample's instructions).
public func residentBytes(pid: Int32) -> UInt64? {
    let fd = open("/proc/\(pid)/statm", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 128)
    let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard n > 0 else { return nil }
    // "size resident shared text lib data dt": skip the first number, read the second.
    var i = 0, pages: UInt64 = 0, digits = 0
    while i < n, buf[i] != 0x20 { i += 1 }
    i += 1
    while i < n, buf[i] >= 0x30, buf[i] <= 0x39, digits < 19 {
        pages = pages * 10 + UInt64(buf[i] - 0x30)
        digits += 1
        i += 1
    }
    guard digits > 0 else { return nil }
    return pages &* UInt64(max(1, sysconf(Int32(_SC_PAGESIZE))))
}
