import ControlProtocol
import DequeModule
#if canImport(Glibc)
import Glibc
#endif

/// What the lab agent holds of one VMM client's output before it goes on the link: whole QMP messages, replies
/// (and the greeting) before events, and events beyond `eventBound` dropped and counted.
///
/// The link carries a few hundred KB/s under TCG, shared by every client. A client that reads everything still
/// gets the VMM's fault events at the VMM's pace, faster than its share of the link; queued in order, its next
/// reply waited behind seconds of its own events. Here a reply overtakes the events queued with it (QMP events are
/// asynchronous, and each carries its own timestamp), and a client's events queue no further than `eventBound`:
/// what does not fit is dropped and said, as the VMM says its own losses, by an `EVENTS_DROPPED` event with
/// `"where": "lab relay"` before the next event that is passed on.
///
/// The VMM ends every message with a newline (docs/protocol.md), so messages are lines here. A message is sent
/// whole before the next begins; a reply waits at most for the end of the message on the link before it.
struct QMPOutbox {
    /// Events queued beyond this are dropped (one event is always kept, whatever its size).
    static let eventBound = 16 << 10

    private var partial: [UInt8] = []
    private var replies = Deque<[UInt8]>()
    private var events = Deque<[UInt8]>()
    /// The message being sent, and how much of it is sent.
    private var current: [UInt8] = []
    private var sent = 0
    private var eventBytes = 0
    /// Bytes of whole replies waiting: the agent reads no more from the VMM while this is a window or more (the
    /// VMM then stops running that client's commands, as its own socket does).
    private(set) var replyBytes = 0
    /// Events dropped since the last `EVENTS_DROPPED` this outbox sent.
    private(set) var dropped: UInt64 = 0
    /// The VMM's end of stream came: an unfinished last line is passed on as it is.
    private var finished = false

    /// Nothing is left to send.
    var isEmpty: Bool { sent == current.count && replies.isEmpty && events.isEmpty && dropped == 0 && (partial.isEmpty || !finished) }

    /// A reply waits (or is being sent): this stream goes before those with only events.
    var hasReply: Bool { !replies.isEmpty || (sent < current.count && !Self.isEvent(current)) }

    static func isEvent(_ line: [UInt8]) -> Bool {
        let prefix = Array(#"{"event""#.utf8)
        var i = 0
        while i < line.count && (line[i] == 0x20 || line[i] == 0x09) { i += 1 }
        return line.count - i >= prefix.count && line[i..<(i + prefix.count)].elementsEqual(prefix)
    }

    mutating func feed(_ bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBufferPointer { buf in
            guard let base = buf.baseAddress else { return }
            var at = 0
            // memchr: the agent runs in the lab's slow guest, often as a debug build.
            while at < buf.count, let nl = memchr(base + at, 0x0A, buf.count - at) {
                let end = base.distance(to: nl.assumingMemoryBound(to: UInt8.self)) + 1
                partial.append(contentsOf: UnsafeBufferPointer(rebasing: buf[at..<end]))
                add(partial)
                partial = []
                at = end
            }
            partial.append(contentsOf: UnsafeBufferPointer(rebasing: buf[at...]))
        }
    }

    mutating func finish() {
        finished = true
        if !partial.isEmpty { add(partial); partial = [] }
    }

    private mutating func add(_ line: [UInt8]) {
        if Self.isEvent(line) {
            if !events.isEmpty && eventBytes + line.count > Self.eventBound {
                dropped += 1
                return
            }
            events.append(line)
            eventBytes += line.count
        } else {
            replies.append(line)
            replyBytes += line.count
        }
    }

    /// Up to `max` bytes to send now: the rest of the message on the link, then replies, then the count of
    /// dropped events, then events. `wallNs` stamps an `EVENTS_DROPPED` made now.
    mutating func take(max: Int, wallNs: @autoclosure () -> UInt64) -> [UInt8] {
        var out: [UInt8] = []
        while out.count < max {
            if sent == current.count {
                if let r = replies.popFirst() {
                    replyBytes -= r.count
                    current = r
                } else if dropped > 0 {
                    var line: [UInt8] = []
                    Event.eventsDropped(count: dropped, where: "lab relay").message(wallNs: wallNs()).write(to: &line)
                    line.append(0x0A)
                    current = line
                    dropped = 0
                } else if let e = events.popFirst() {
                    eventBytes -= e.count
                    current = e
                } else {
                    break
                }
                sent = 0
            }
            let n = Swift.min(max - out.count, current.count - sent)
            out.append(contentsOf: current[sent..<(sent + n)])
            sent += n
        }
        if sent == current.count && !current.isEmpty { current = []; sent = 0 }
        return out
    }
}
