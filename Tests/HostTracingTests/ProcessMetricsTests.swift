import Foundation
import ProcessSupport
@testable import HostTracing
import Testing

/// `top` reads each VM's resident size from /proc/PID/statm: the same counter /proc/PID/status shows as VmRSS, read
/// here the slow way, independently.
struct ProcessMetricsTests {
    static func vmRSS(_ pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kb * 1024
    }

    /// Read of a child whose memory stands still (this process's moves: the other tests run beside it), with 48 MiB
    /// of its own written, so that a wrong field (size, shared) would not happen to agree.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3"))
    func residentBytesIsVmRSS() throws {
        let child = try ChildProcess(["/usr/bin/python3", "-c", "import sys, time; b = b'x' * (48 << 20); print('ready', flush=True); time.sleep(30)"],
                                     redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: "/dev/null"))
        defer { _ = child.terminate(grace: 1) }
        var status: UInt64 = 0, statm: UInt64 = 0
        // Ready once its RSS holds the 48 MiB; then the two reads agree to within a page or two.
        let deadline = Date().addingTimeInterval(20)
        repeat {
            usleep(100_000)
            status = Self.vmRSS(child.pid) ?? 0
            statm = residentBytes(pid: child.pid) ?? 0
        } while status < 48 << 20 && Date() < deadline
        #expect(status >= 48 << 20, "the child's VmRSS \(status)")
        #expect(max(statm, status) - min(statm, status) < 1 << 20, "statm \(statm), VmRSS \(status)")
        #expect(residentBytes(pid: Int32.max) == nil, "no such process")
    }
}
