import DequeModule
import Glibc

/// What a client has not yet been sent: whole lines, each kept as the array it was encoded into.
///
/// It was one growing byte array. At the 4 MiB bound that array doubled, copying what it held, so one client that
/// did not read cost up to twice its bound at once (and the copy's source stayed in malloc's heap afterwards); a
/// VMM with two such clients went 17 MiB over its baseline in CI, over the 16 MiB docs/reliability.md states.
/// Lines queued here are never copied: an event encoded once for every client is held once, however many clients
/// have it queued.
struct OutputQueue {
    private var lines = Deque<[UInt8]>()
    /// Bytes of `lines.first` already sent.
    private var sentOfFirst = 0
    /// Bytes queued and not yet sent.
    private(set) var count = 0
    /// The most that was queued since the queue was last empty.
    private(set) var highWater = 0

    var isEmpty: Bool { count == 0 }

    mutating func append(_ line: [UInt8]) {
        guard !line.isEmpty else { return }
        lines.append(line)
        count += line.count
        highWater = max(highWater, count)
    }

    /// Everything queued, in one array (for `respond(to:)`, the fuzzer's socketless server).
    var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        for (i, l) in lines.enumerated() { out += i == 0 ? l[sentOfFirst...] : l[...] }
        return out
    }

    /// Sends what the socket takes without blocking, up to `linesPerCall` lines a system call. Returns false when
    /// the peer is gone.
    mutating func send(to fd: Int32) -> Bool {
        while !lines.isEmpty {
            var iov: [iovec] = []
            iov.reserveCapacity(Self.linesPerCall)
            let n = Self.withIOVecs(lines.prefix(Self.linesPerCall)[...], skipFirst: sentOfFirst, &iov) { iov in
                iov.withUnsafeMutableBufferPointer { buf in
                    var msg = msghdr()
                    msg.msg_iov = buf.baseAddress
                    msg.msg_iovlen = buf.count
                    return sendmsg(fd, &msg, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                }
            }
            if n < 0 {
                if errno == EINTR { continue }
                return errno == EAGAIN || errno == EWOULDBLOCK
            }
            consume(n)
        }
        return true
    }

    static let linesPerCall = 16

    /// Calls `body` with an iovec for each of `rest` (the first one's first `skipFirst` bytes left out), each
    /// line's storage pinned for the call.
    private static func withIOVecs(_ rest: Deque<[UInt8]>.SubSequence, skipFirst: Int, _ iov: inout [iovec],
                                   _ body: (inout [iovec]) -> Int) -> Int {
        guard let line = rest.first else { return body(&iov) }
        return line.withUnsafeBytes { raw in
            let skip = iov.isEmpty ? skipFirst : 0
            iov.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: raw.baseAddress! + skip), iov_len: raw.count - skip))
            return withIOVecs(rest.dropFirst(), skipFirst: skipFirst, &iov, body)
        }
    }

    private mutating func consume(_ sent: Int) {
        var left = sent
        count -= sent
        while left > 0, let first = lines.first {
            let rest = first.count - sentOfFirst
            if left < rest { sentOfFirst += left; return }
            left -= rest
            sentOfFirst = 0
            lines.removeFirst()
        }
        if lines.isEmpty { lines = Deque(); highWater = 0 }  // a backlog's storage is not kept
    }
}
