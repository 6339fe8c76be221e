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

    @Test func residentBytesIsVmRSS() throws {
        // Grows this process by 32 MiB in between, so that a wrong field (size, shared) would not happen to agree.
        let before = try #require(residentBytes(pid: getpid()))
        let block = UnsafeMutableRawPointer.allocate(byteCount: 32 << 20, alignment: 4096)
        defer { block.deallocate() }
        memset(block, 1, 32 << 20)
        let status = try #require(Self.vmRSS(getpid())), statm = try #require(residentBytes(pid: getpid()))
        // The two reads are moments apart: within 1 MiB of each other.
        #expect(statm > before + (30 << 20), "\(before) → \(statm)")
        #expect(max(statm, status) - min(statm, status) < 1 << 20, "statm \(statm), VmRSS \(status)")
        #expect(residentBytes(pid: Int32.max) == nil, "no such process")
    }
}

/// `top` counts a VM's vCPUs by the `vcpuN` directories of its debugfs directory, among the statistics files.
struct VCPUDirectoryTests {
    @Test(arguments: [("vcpu0", true), ("vcpu17", true), ("vcpu", false), ("vcpux", false), ("vcpu1a", false), ("xvcpu1", false),
                      ("vcpu-1", false), ("exits", false), ("vcpu١", false)])
    func aVCPUDirectoryIsVcpuAndANumber(name: String, isVCPU: Bool) {
        #expect(HostVMs.isVCPUDirectory(name) == isVCPU)
    }
}

/// The file and directory reads `top` makes for every VM each second, against Foundation's on the same paths.
struct PseudoFileReadingTests {
    @Test func readsWholeFilesPastItsBufferAndStopsAtTheLimit() throws {
        var rng = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 7) }
        rng[4095] = 0x0A
        let path = NSTemporaryDirectory() + "vmscope-pseudo-\(getpid())"
        try Data(rng).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        #expect(readPseudoFileBytes(path, maxBytes: 1 << 20) == rng)
        #expect(readPseudoFileBytes(path) == Array(rng.prefix(65536)), "64 KiB unless asked")
        #expect(readPseudoFileBytes(path, maxBytes: 4097) == Array(rng.prefix(4097)))
        #expect(readPseudoFileBytes(path + "-none") == nil)
        #expect(readPseudoFile("/proc/self/comm")?.isEmpty == false)
    }

    @Test func listsAndFollowsAsFoundationDoes() throws {
        let fds = try #require(directoryEntries("/proc/self/fd"))
        // This process's descriptors move (threads of the test runner open and close files): the stable ones.
        #expect(fds.contains("0") && fds.contains("1") && !fds.contains(".") && !fds.contains(".."))
        let etc = try #require(directoryEntries("/etc")).sorted()
        #expect(etc == (try FileManager.default.contentsOfDirectory(atPath: "/etc")).sorted())
        #expect(directoryEntries("/nonexistent-\(getpid())") == nil)
        #expect(symbolicLinkTarget("/proc/self/exe") == (try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")))
        #expect(symbolicLinkTarget("/etc/hostname") == nil, "not a link")
    }
}
