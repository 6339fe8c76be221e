import Foundation
import Glibc
import Testing
@testable import ControlServer

/// The control server's per-client output: lines queued whole, sent in pieces as the socket takes them.
struct OutputQueueTests {
    /// A socket that takes a few KiB at a time: every byte arrives once, in order, whatever the cuts.
    @Test func whatASlowSocketTakesArrivesWholeAndInOrder() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        var small: Int32 = 4096
        setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var q = OutputQueue()
        var expected: [UInt8] = []
        var rng = SystemRandomNumberGenerator()
        for i in 0..<2000 {
            let line = Array("line \(i) ".utf8) + [UInt8](repeating: UInt8(0x41 + i % 26), count: Int.random(in: 0...3000, using: &rng)) + [0x0A]
            q.append(line)
            q.append([])  // nothing, and counted as nothing
            expected += line
        }
        #expect(q.count == expected.count)
        #expect(q.bytes.count == expected.count && q.bytes.elementsEqual(expected))
        var received: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        var sends = 0
        var shrankOnly = true, alive = true
        func receive() -> Int {
            let n = buf.withUnsafeMutableBytes { recv(fds[1], $0.baseAddress, Int.random(in: 1...(1 << 16), using: &rng), Int32(MSG_DONTWAIT)) }
            if n > 0 { received += buf[0..<n] }
            return n
        }
        for _ in 0..<100_000 where !q.isEmpty && alive {
            let before = q.count
            alive = q.send(to: fds[0])
            if q.count != before { sends += 1 }
            shrankOnly = shrankOnly && q.count <= before
            _ = receive()
        }
        while receive() > 0 {}
        #expect(alive && shrankOnly)
        // Not `received == expected`: a failure would describe megabytes.
        let common = min(received.count, expected.count)
        let firstDifference = (0..<common).first { received[$0] != expected[$0] } ?? common
        #expect(received.count == expected.count && firstDifference == expected.count,
                "\(received.count) of \(expected.count) bytes; they differ from byte \(firstDifference)")
        #expect(q.highWater == 0 && q.count == 0)
        #expect(sends > 100, "the socket took it in \(sends) pieces: the cuts were not exercised")
    }

    @Test func aClosedPeerIsSaid() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]) }
        close(fds[1])
        var q = OutputQueue()
        q.append(Array("x\n".utf8))
        let alive = q.send(to: fds[0])
        #expect(!alive)
    }
}
