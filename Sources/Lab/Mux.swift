#if canImport(Glibc)
import Glibc
#endif

/// The lab's link between host and guest: many byte streams (one per control-socket client) over one virtio-serial
/// port, as frames `type u8 | channel u32 LE | length u32 LE | payload`.
///
/// The host side (`LabRelay`) accepts clients on the control socket and opens a channel for each; the guest side
/// (`LabAgent`) connects each channel to the VMM's own socket. Both ends are one `MuxPump`: a single poll loop
/// over non-blocking descriptors.
///
/// Fairness is by flow control, as the VMM's own socket has it from the kernel: each stream may have at most
/// `window` bytes on the link that the other end has not yet written to its descriptor (the receiver returns
/// `credit` as it writes), and the link itself holds at most `linkWindow` bytes the other end has not read
/// (`received`), filled from the streams in turn, `readBudget` bytes each, streams with nothing in flight first. A client that stops reading holds one window; its backlog stays in the kernel's
/// buffers and the VMM's (which stops running that client's commands), never in front of another client's reply
/// on the link. A half-close is passed on after every byte queued before it. The agent's end reads the VMM's side as
/// whole QMP messages (`messageAware`, `QMPOutbox`): a reply overtakes the client's queued events, streams with a
/// reply waiting go first, and events beyond a small bound are dropped and counted rather than queued.
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
    /// both ways: the sender wrote this many more bytes of channel N's data to its descriptor (u32 LE payload); the
    /// receiver may send that many more.
    case credit = 7
    /// both ways, channel 0: the sender read this many more bytes of stream data off the link (u32 LE payload).
    /// It keeps the link's own queue short: data goes on the link only while less than `linkWindow` is unread.
    case received = 8

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
/// Bounds: at most `maxChannels` streams; each stream's unsent bytes at most `window` (a peer that sends past its
/// credit has its stream closed); stream data on the link, queued here or in the link's buffers, at most
/// `linkWindow`, plus the control frames.
public final class MuxPump {
    public struct Stream {
        public var fd: Int32
        var out = OutQueue()
        /// The other side closed this stream: close once `out` is written.
        var closing = false
        /// Our reading side reached end of stream (a half-close was passed on).
        var readDone = false
        /// The other side's reader reached end of stream: shut our write side once `out` is written.
        var shutPending = false
        /// Bytes of this stream sent on the link that the peer has not yet credited.
        var unacked = 0
        /// Bytes written to `fd` not yet credited to the peer.
        var delivered = 0
        /// With `messageAware`: what was read from `fd` and waits for the link, as whole messages.
        var outbox: QMPOutbox?
        /// `onStreamEnded` was called (with an outbox: once everything read before the end was sent).
        var endReported = false
        public var label: String
    }

    public let link: Int32
    private var linkOut = OutQueue()
    private var decoder = MuxDecoder()
    public private(set) var streams: [UInt32: Stream] = [:]
    public var maxChannels = 64
    /// Streams added from now on carry QMP messages from the VMM (the agent's side): read into a `QMPOutbox`, so a
    /// reply overtakes queued events and a client's events queue no further than its bound.
    public var messageAware = false
    /// Bytes of one stream in flight (sent, not yet written out by the other end); both ends must agree.
    public static let window = 64 << 10
    /// Stream data sent on the link and not yet read by the other end, at most (the queue in front of any
    /// stream's next bytes: at the lab's few MB/s, tens of milliseconds).
    public static let linkWindow = 64 << 10
    private var linkInFlight = 0
    /// Stream data read off the link, not yet reported to the other end.
    private var receivedUnreported = 0
    /// Streams read in the last round: the others (a reply after a pause, a new client's greeting) go first.
    private var readLastRound: Set<UInt32> = []
    /// Bytes read from one stream per turn.
    public var readBudget = 16 << 10
    /// Where the next round's turns start: the stream after the last one read.
    private var turn = 0
    /// Streams closed because their peer sent past its credit (a broken peer: ours never does).
    public private(set) var overruns = 0
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
        var s = Stream(fd: fd, label: label)
        if messageAware { s.outbox = QMPOutbox() }
        streams[channel] = s
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
            receivedUnreported += m.payload.count
            guard var s = streams[m.channel] else { return }   // closed here already: the peer learns from our close
            s.out.append(m.payload)
            if s.out.count > Self.window {
                overruns += 1
                streams[m.channel] = s
                drop(channel: m.channel, tellPeer: true)
                onFrame(MuxMessage(type: .close, channel: m.channel, payload: Array("the peer sent past its credit: over \(Self.window) bytes waiting".utf8)))
                return
            }
            streams[m.channel] = s
        case .credit:
            guard let n = Self.u32(m.payload), var s = streams[m.channel] else { return }
            s.unacked -= min(s.unacked, n)
            streams[m.channel] = s
        case .received:
            guard let n = Self.u32(m.payload) else { return }
            linkInFlight -= min(linkInFlight, n)
        case .close:
            if var s = streams[m.channel] {
                s.closing = true
                streams[m.channel] = s
            }
            onFrame(m)
        case .shutWrite:
            // After what came before it: the bytes still queued for this stream go first.
            guard var s = streams[m.channel] else { return }
            s.shutPending = true
            streams[m.channel] = s
            shutIfDrained(m.channel)
        default:
            onFrame(m)
        }
    }

    private static func u32(_ p: [UInt8]) -> Int? {
        guard p.count == 4 else { return nil }
        return Int(UInt32(p[0]) | UInt32(p[1]) << 8 | UInt32(p[2]) << 16 | UInt32(p[3]) << 24)
    }

    private static func u32Bytes(_ v: Int) -> [UInt8] {
        let n = UInt32(truncatingIfNeeded: v)
        return [UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24)]
    }

    private func shutIfDrained(_ ch: UInt32) {
        guard var s = streams[ch], s.shutPending, s.out.count == 0 else { return }
        s.shutPending = false
        streams[ch] = s
        _ = shutdown(s.fd, Int32(SHUT_WR))
    }

    /// Writes what stream `ch`'s descriptor takes now and credits the peer for it; false on a write error.
    private func flushStream(_ ch: UInt32) -> Bool {
        guard var s = streams[ch], s.out.count > 0 else { return true }
        let before = s.out.count
        let ok = s.out.flush(to: s.fd)
        s.delivered += before - s.out.count
        // Credit in quarters of the window: few frames (each one a buffer, an interrupt, a round for the lab's
        // guest), and no stall: a sender waits only with a whole window out, of which a quarter is credited.
        if s.delivered >= Self.window / 4 {
            send(.credit, channel: ch, Self.u32Bytes(s.delivered))
            s.delivered = 0
        }
        streams[ch] = s
        if ok { shutIfDrained(ch) }
        return ok
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
            // The streams in turn order, starting after the last one read; those not read last round (a reply after
            // a pause, a new client's greeting) before those streaming.
            var order = streams.keys.sorted()
            if !order.isEmpty {
                let k = turn % order.count
                order = Array(order[k...] + order[..<k])
            }
            let rotated = order
            order = order.filter { !readLastRound.contains($0) } + order.filter { readLastRound.contains($0) }
            var readThisRound: Set<UInt32> = []
            defer { readLastRound = readThisRound }
            let readStreams = linkInFlight < Self.linkWindow
            var sendable = false
            for ch in order {
                let s = streams[ch]!
                var ev: Int16 = 0
                if let box = s.outbox {
                    // Read while the client takes what it is sent (a client that does not read holds one window, and
                    // its backlog stays in the VMM, which stops running its commands and queuing its events), and
                    // while whole replies wait for less than a window; events beyond their bound are dropped.
                    if !s.readDone && !s.closing && s.unacked < Self.window && box.replyBytes < Self.window {
                        ev |= Int16(POLLIN)
                    }
                    if readStreams && !box.isEmpty && s.unacked < Self.window { sendable = true }
                    if s.readDone && box.isEmpty && !s.endReported { sendable = true }
                } else if readStreams && !s.readDone && !s.closing && s.unacked < Self.window { ev |= Int16(POLLIN) }
                if s.out.count > 0 { ev |= Int16(POLLOUT) }
                fds.append(pollfd(fd: s.fd, events: ev, revents: 0))
            }
            let r = Glibc.poll(&fds, nfds_t(fds.count), sendable ? 0 : 1000)
            if r < 0 {
                if errno == EINTR { continue }
                stop("poll: \(String(cString: strerror(errno)))")
                break
            }
            // The link.
            let lr = fds[0].revents
            if lr & Int16(POLLIN) != 0 || lr & Int16(POLLHUP | POLLERR) != 0 {
                // Until it has no more (at most 16 reads): a virtio-serial port gives one of the host's buffers a
                // read, and a round per buffer let the guest fall ever further behind the host's small frames.
                var linkEnded = false
                for _ in 0..<16 {
                    let n = scratch.withUnsafeMutableBytes { Glibc.read(link, $0.baseAddress, $0.count) }
                    if n > 0 {
                        do {
                            for m in try decoder.feed(scratch[0..<n]) { handle(m) }
                        } catch {
                            stop("link: \(error)")
                            linkEnded = true
                        }
                        if linkEnded { break }
                        continue
                    }
                    if n < 0 && errno == EINTR { continue }
                    // End of stream (a socket), or the host end gone (virtio-serial reads 0 then).
                    if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && lr & Int16(POLLHUP) != 0) {
                        stop("link closed")
                        linkEnded = true
                    }
                    break
                }
                if linkEnded { break }
            }
            if linkOut.count > 0 && !linkOut.flush(to: link) {
                stop("link write: \(String(cString: strerror(errno)))")
                break
            }
            for (i, fd) in extras.enumerated() where fds[1 + i].revents != 0 { onExtraReadable(fd) }
            // The streams: each takes what it can of its output; then, while the link's queue is short, one
            // bounded read from each in turn, within its credit.
            for (i, ch) in order.enumerated() {
                let rev = fds[1 + extras.count + i].revents
                guard rev != 0, streams[ch] != nil else { continue }
                if !flushStream(ch) { drop(channel: ch, tellPeer: true); continue }
                guard var s = streams[ch], rev & Int16(POLLIN | POLLHUP | POLLERR) != 0, !s.readDone, !s.closing else { continue }
                if s.outbox != nil {
                    let n = scratch.withUnsafeMutableBytes { Glibc.read(s.fd, $0.baseAddress, $0.count) }
                    if n > 0 {
                        s.outbox!.feed(scratch[0..<n])
                    } else if n == 0 {
                        s.outbox!.finish()
                        s.readDone = true
                    } else if errno != EAGAIN && errno != EINTR {
                        drop(channel: ch, tellPeer: true)
                        continue
                    }
                    streams[ch] = s
                    continue
                }
                let allowed = min(readBudget, Self.window - s.unacked, Self.linkWindow - linkInFlight, scratch.count)
                guard allowed > 0 else { continue }
                let n = scratch.withUnsafeMutableBytes { Glibc.read(s.fd, $0.baseAddress, allowed) }
                if n > 0 {
                    streams[ch] = s
                    sendData(ch, scratch[0..<n], rotated: rotated, sentThisRound: &readThisRound)
                } else if n == 0 {
                    s.readDone = true
                    streams[ch] = s
                    onStreamEnded(ch)
                } else if errno != EAGAIN && errno != EINTR {
                    drop(channel: ch, tellPeer: true)
                }
            }
            sendMessages(order: order, rotated: rotated, sentThisRound: &readThisRound)
            // In quarters of the window, as credits are.
            if receivedUnreported >= Self.linkWindow / 4 {
                send(.received, channel: 0, Self.u32Bytes(receivedUnreported))
                receivedUnreported = 0
            }
            if linkOut.count > 0 && !linkOut.flush(to: link) {
                stop("link write: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// The message-aware streams' turns on the link: those with a reply waiting first, then the others, each in
    /// the round's order, `readBudget` bytes each within its credit and the link's window. A stream whose VMM end
    /// closed is reported ended once all it read is sent.
    private func sendMessages(order: [UInt32], rotated: [UInt32], sentThisRound: inout Set<UInt32>) {
        let withOutbox = order.filter { streams[$0]?.outbox != nil }
        guard !withOutbox.isEmpty else { return }
        let byPriority = withOutbox.filter { streams[$0]!.outbox!.hasReply } + withOutbox.filter { !streams[$0]!.outbox!.hasReply }
        for ch in byPriority {
            guard var s = streams[ch], var box = s.outbox, !box.isEmpty else { continue }
            let allowed = min(readBudget, Self.window - s.unacked, Self.linkWindow - linkInFlight)
            guard allowed > 0 else { continue }
            let bytes = box.take(max: allowed, wallNs: Self.wallNs())
            s.outbox = box
            streams[ch] = s
            if !bytes.isEmpty { sendData(ch, bytes[...], rotated: rotated, sentThisRound: &sentThisRound) }
        }
        for ch in withOutbox {
            guard var s = streams[ch], s.readDone, !s.endReported, s.outbox!.isEmpty else { continue }
            s.endReported = true
            streams[ch] = s
            onStreamEnded(ch)
        }
    }

    /// Puts `bytes` of stream `ch` on the link (in frames of at most `maxPayload`), counts them in flight, and
    /// moves the next round's first turn past `ch`.
    private func sendData(_ ch: UInt32, _ bytes: ArraySlice<UInt8>, rotated: [UInt32], sentThisRound: inout Set<UInt32>) {
        var at = bytes.startIndex
        while at < bytes.endIndex {
            let end = min(bytes.endIndex, at + MuxFrame.maxPayload)
            linkOut.append(MuxFrame.encode(.data, channel: ch, bytes[at..<end]))
            at = end
        }
        streams[ch]?.unacked += bytes.count
        linkInFlight += bytes.count
        sentThisRound.insert(ch)
        turn = (rotated.firstIndex(of: ch).map { (turn % max(1, rotated.count)) + $0 + 1 }) ?? turn
    }

    private static func wallNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
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
