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

/// Resident set size of a process in bytes.
public func residentBytes(pid: Int32) -> UInt64? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
    return kb * 1024
}
