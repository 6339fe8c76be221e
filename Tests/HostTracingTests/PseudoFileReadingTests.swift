import Foundation
import Testing
@testable import HostTracing

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
