#if canImport(Glibc)
import Glibc
#endif

/// The lab's link between host and guest: many byte streams (one per control-socket client) over one virtio-serial
/// port, as frames `type u8 | channel u32 LE | length u32 LE | payload`.
///
/// The host side (`LabRelay`) accepts clients on the control socket and opens a channel for each; the guest side
/// (`LabAgent`) connects each channel to the VMM's own socket. Both ends are one `MuxPump`: a single poll loop
/// over non-blocking descriptors with bounded buffers, reading at most `readBudget` bytes from each stream per
/// round, so one busy client cannot starve another and a client that stops reading is dropped rather than
/// growing memory without bound.
public enum MuxFrame: UInt8, Sendable {
    /// host → guest: connect channel N to the VMM.
    case open = 1
    /// both ways: bytes of channel N.
    case data = 2
    /// both ways: channel N is gone (the peer closes its end).
    case close = 3
    /// host → guest: the client closed its write side (the guest shuts down the write side to the VMM).
    case shutWrite = 4
    /// guest → host, once: the agent is up and the VMM answers; payload is a line of text.
    case hello = 5
    /// guest → host: the agent is stopping; payload says why.
    case bye = 6

    public static let headerSize = 9
    public static let maxPayload = 64 << 10

    public static func encode(_ type: MuxFrame, channel: UInt32, _ payload: ArraySlice<UInt8> = []) -> [UInt8] {
        precondition(payload.count <= maxPayload)
        var out = [UInt8]()
        out.reserveCapacity(headerSize + payload.count)
        out.append(type.rawValue)
        for v in [channel, UInt32(payload.count)] {
            out.append(UInt8(v & 0xFF)); out.append(UInt8((v >> 8) & 0xFF))
            out.append(UInt8((v >> 16) & 0xFF)); out.append(UInt8(v >> 24))
        }
        out.append(contentsOf: payload)
        return out
    }
}

/// A decoded frame.
public struct MuxMessage: Equatable, Sendable {
    public var type: MuxFrame
    public var channel: UInt32
    public var payload: [UInt8]
}

/// Incremental frame decoder: bytes in, whole frames out; a bad header is an error (the link is ours, so a bad
/// frame means the link is broken, not a message to skip).
public struct MuxDecoder: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0

    public init() {}

    public struct BadFrame: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    public mutating func feed(_ bytes: ArraySlice<UInt8>) throws(BadFrame) -> [MuxMessage] {
        buffer.append(contentsOf: bytes)
        var out: [MuxMessage] = []
        while buffer.count - start >= MuxFrame.headerSize {
            let h = start
            guard let type = MuxFrame(rawValue: buffer[h]) else {
                throw BadFrame(description: "unknown frame type \(buffer[h])")
            }
            func u32(_ at: Int) -> UInt32 {
                UInt32(buffer[at]) | UInt32(buffer[at + 1]) << 8 | UInt32(buffer[at + 2]) << 16 | UInt32(buffer[at + 3]) << 24
            }
            let channel = u32(h + 1), length = Int(u32(h + 5))
            guard length <= MuxFrame.maxPayload else {
                throw BadFrame(description: "frame of \(length) bytes (at most \(MuxFrame.maxPayload))")
            }
            guard buffer.count - h - MuxFrame.headerSize >= length else { break }
            let body = h + MuxFrame.headerSize
            out.append(MuxMessage(type: type, channel: channel, payload: Array(buffer[body..<(body + length)])))
            start = body + length
        }
        if start > 0 && (start == buffer.count || start > 1 << 20) {
            buffer.removeFirst(start)
            start = 0
        }
        return out
    }
}

/// Bytes waiting to be written to a non-blocking descriptor.
struct OutQueue {
    private var chunks: [[UInt8]] = []
    private var offset = 0
    private(set) var count = 0

    mutating func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        chunks.append(bytes)
        count += bytes.count
    }

    /// Writes what the descriptor takes now. Returns false on a write error other than EAGAIN.
    mutating func flush(to fd: Int32) -> Bool {
        while let first = chunks.first {
            let n = first.withUnsafeBytes { raw in
                Glibc.write(fd, raw.baseAddress! + offset, first.count - offset)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return errno == EAGAIN || errno == EWOULDBLOCK
            }
            offset += n
            count -= n
            if offset == first.count {
                chunks.removeFirst()
                offset = 0
            }
            if n == 0 { return true }
        }
        return true
    }
}

func setNonBlocking(_ fd: Int32) {
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
}

/// One end of the link: the link descriptor, the streams multiplexed over it, and the loop that moves bytes.
///
/// Bounds: at most `maxChannels` streams; each stream's unsent bytes at most `streamBound` (a stream past it is
/// closed: its reader has stopped reading); the link's unsent bytes at most `linkBound` (past it, streams are not
/// read until it drains).
public final class MuxPump {
    public struct Stream {
        public var fd: Int32
        var out = OutQueue()
        /// The other side closed this stream: close once `out` is written.
        var closing = false
        /// Our reading side reached end of stream (a half-close was passed on).
        var readDone = false
        public var label: String
    }

    public let link: Int32
    private var linkOut = OutQueue()
    private var decoder = MuxDecoder()
    public private(set) var streams: [UInt32: Stream] = [:]
    public var maxChannels = 64
    public var streamBound = 16 << 20
    public var linkBound = 8 << 20
    /// Bytes read from one stream per round.
    public var readBudget = 64 << 10
    /// Extra descriptors the owner polls (a listener, a signal pipe); `onReady` is called for each that is readable.
    public var extraFDs: [Int32] = []
    /// Called for each frame the peer sends that is not stream data (open, hello, bye), and for every close.
    public var onFrame: (MuxMessage) -> Void = { _ in }
    public var onExtraReadable: (Int32) -> Void = { _ in }
    /// Called once per round of the loop (at least once a second).
    public var onTick: () -> Void = {}
    /// Called when a stream's own descriptor reached end of stream (the owner decides: half-close or close).
    public var onStreamEnded: (UInt32) -> Void = { _ in }
    /// Why the loop ended, once it has.
    public private(set) var stopReason: String?

    public init(link: Int32) {
        self.link = link
        setNonBlocking(link)
        // A stream whose reader went away must fail its write with EPIPE, not kill the process.
        signal(SIGPIPE, SIG_IGN)
    }

    public func send(_ type: MuxFrame, channel: UInt32, _ payload: [UInt8] = []) {
        linkOut.append(MuxFrame.encode(type, channel: channel, payload[...]))
    }

    /// Adds a stream under `channel` (a descriptor this pump now owns).
    public func add(channel: UInt32, fd: Int32, label: String) {
        setNonBlocking(fd)
        streams[channel] = Stream(fd: fd, label: label)
    }

    /// Closes stream `channel` here; tells the peer unless it told us.
    public func drop(channel: UInt32, tellPeer: Bool) {
        guard let s = streams.removeValue(forKey: channel) else { return }
        Glibc.close(s.fd)
        if tellPeer { send(.close, channel: channel) }
    }

    public func stop(_ reason: String) {
        if stopReason == nil { stopReason = reason }
    }

    private func handle(_ m: MuxMessage) {
        switch m.type {
        case .data:
            guard var s = streams[m.channel] else { return }   // closed here already: the peer learns from our close
            s.out.append(m.payload)
            if s.out.count > streamBound {
                streams[m.channel] = s
                drop(channel: m.channel, tellPeer: true)
                onFrame(MuxMessage(type: .close, channel: m.channel, payload: Array("reader stopped reading: over \(streamBound) bytes waiting".utf8)))
                return
            }
            streams[m.channel] = s
        case .close:
            if var s = streams[m.channel] {
                s.closing = true
                streams[m.channel] = s
            }
            onFrame(m)
        case .shutWrite:
            if let s = streams[m.channel] { _ = shutdown(s.fd, Int32(SHUT_WR)) }
        default:
            onFrame(m)
        }
    }

    /// Runs until `stop` is called or the link fails.
    public func run() {
        var scratch = [UInt8](repeating: 0, count: max(readBudget, 64 << 10))
        while stopReason == nil {
            onTick()
            if stopReason != nil { break }
            // Streams whose peer closed them go once their bytes are written.
            for (ch, s) in streams where s.closing && s.out.count == 0 {
                streams.removeValue(forKey: ch)
                Glibc.close(s.fd)
            }
            var fds: [pollfd] = [pollfd(fd: link, events: Int16(POLLIN) | (linkOut.count > 0 ? Int16(POLLOUT) : 0), revents: 0)]
            let extras = extraFDs   // the callbacks may change extraFDs: this round polls these
            for fd in extras { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
            let order = Array(streams.keys)
            let readStreams = linkOut.count < linkBound
            for ch in order {
                let s = streams[ch]!
                var ev: Int16 = 0
                if readStreams && !s.readDone && !s.closing { ev |= Int16(POLLIN) }
                if s.out.count > 0 { ev |= Int16(POLLOUT) }
                fds.append(pollfd(fd: s.fd, events: ev, revents: 0))
            }
            let r = Glibc.poll(&fds, nfds_t(fds.count), 1000)
            if r < 0 {
                if errno == EINTR { continue }
                stop("poll: \(String(cString: strerror(errno)))")
                break
            }
            // The link.
            let lr = fds[0].revents
            if lr & Int16(POLLIN) != 0 || lr & Int16(POLLHUP | POLLERR) != 0 {
                let n = scratch.withUnsafeMutableBytes { Glibc.read(link, $0.baseAddress, $0.count) }
                if n > 0 {
                    do {
                        for m in try decoder.feed(scratch[0..<n]) { handle(m) }
                    } catch {
                        stop("link: \(error)")
                        break
                    }
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                    // virtio-serial reads 0 while the host end is not connected; a socket, at end of stream.
                    if lr & Int16(POLLHUP) != 0 || n == 0 { stop("link closed") ; break }
                }
            }
            if linkOut.count > 0 && !linkOut.flush(to: link) {
                stop("link write: \(String(cString: strerror(errno)))")
                break
            }
            for (i, fd) in extras.enumerated() where fds[1 + i].revents != 0 { onExtraReadable(fd) }
            // The streams: a bounded read from each, then whatever each takes of its output.
            for (i, ch) in order.enumerated() {
                let rev = fds[1 + extras.count + i].revents
                guard rev != 0, var s = streams[ch] else { continue }
                if rev & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !s.readDone && !s.closing {
                    let n = scratch.withUnsafeMutableBytes { Glibc.read(s.fd, $0.baseAddress, min(readBudget, $0.count)) }
                    if n > 0 {
                        var at = 0
                        while at < n {
                            let end = min(n, at + MuxFrame.maxPayload)
                            linkOut.append(MuxFrame.encode(.data, channel: ch, scratch[at..<end]))
                            at = end
                        }
                    } else if n == 0 {
                        s.readDone = true
                        streams[ch] = s
                        onStreamEnded(ch)
                        guard streams[ch] != nil else { continue }
                    } else if errno != EAGAIN && errno != EINTR {
                        drop(channel: ch, tellPeer: true)
                        continue
                    }
                }
                if s.out.count > 0 {
                    if !s.out.flush(to: s.fd) {
                        drop(channel: ch, tellPeer: true)
                        continue
                    }
                    streams[ch]?.out = s.out
                }
            }
            if linkOut.count > 0 && !linkOut.flush(to: link) {
                stop("link write: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Writes what is left for the link (a goodbye), waiting at most `ms`.
    public func drainLink(ms: Int32) {
        var left = ms
        while linkOut.count > 0 && left > 0 {
            var p = pollfd(fd: link, events: Int16(POLLOUT), revents: 0)
            _ = Glibc.poll(&p, 1, 50)
            left -= 50
            if !linkOut.flush(to: link) { return }
        }
    }
}
