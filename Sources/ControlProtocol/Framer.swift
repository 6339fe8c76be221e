import Foundation

/// Splits a QMP byte stream into messages.
///
/// QMP does not need newlines: QEMU's own clients (Python's `qemu.qmp`) send one JSON object after another
/// with nothing between them, while `socat` and humans send lines. So a message ends where its top-level
/// object or array closes; a newline inside an unfinished message ends it only when what came so far can
/// no longer become valid JSON (the sender's error shows at once and the stream resyncs at that newline).
/// Input that does not start with `{` or `[` is taken up to the newline, to be refused as a whole.
public struct Framer: Sendable {
    public enum Frame: Equatable, Sendable {
        /// One message's bytes (possibly invalid JSON, for the caller to refuse with a parse error).
        case message([UInt8])
        /// A message longer than `maxMessage`: discarded up to the next newline.
        case tooLong
        /// A message that was a whole line, already parsed (only with `parsesLines`).
        case parsed(JSONDocument)
    }

    /// Whether messages are handed out parsed (`.parsed`, a `JSONDocument`; text that is not JSON still comes as
    /// `.message`), and a message that is a whole line is parsed as it is framed instead of being scanned byte by
    /// byte first: what a client of a server that ends every message with a newline (the VMM, QEMU) wants. A
    /// line is taken once its newline has arrived; one that is not exactly one JSON value (pretty-printed, two
    /// on a line, broken) is framed byte by byte. So is a message that may have ended without a newline (what
    /// has come ends with `}` or `]`).
    public let parsesLines: Bool
    /// How far a pending line was searched for its newline.
    private var newlineSearched = 0

    public let maxMessage: Int
    private var buffer: [UInt8] = []
    private var scan = 0          // next byte to look at
    private var start = 0         // first byte of the current message
    private var depth = 0
    private var inString = false
    private var escaped = false
    private var lineMode = false  // a top-level non-container: runs to the newline
    private var inMessage = false
    private var discarding = false
    /// The newline that ended the last line of an unfinished message, if any.
    private var unfinishedNewline: Int?
    /// How long the unfinished message was when it was last checked for validity at a newline: the next check
    /// waits until it has doubled, so checking costs O(size) in all however many lines a message has (it
    /// re-parsed the whole message at every newline). An error is still found, at the next check or when the
    /// sender pauses (`flushUnfinishedLine`), and the message still ends at the newline before it.
    private var checkedLength = 0
    /// Validity checks run (for the test that holds the bound).
    public private(set) var validityChecks = 0

    public init(maxMessage: Int = QMP.maxLine, parsesLines: Bool = false) {
        self.maxMessage = maxMessage
        self.parsesLines = parsesLines
    }

    /// Bytes received but not yet part of a complete message.
    public var pendingBytes: Int { buffer.count - start }

    public mutating func feed(_ bytes: some Collection<UInt8>) -> [Frame] {
        buffer.append(contentsOf: bytes)
        return scanBuffer()
    }

    /// The same for a slice of an array (what a socket read gives), without generic dispatch.
    public mutating func feed(_ bytes: ArraySlice<UInt8>) -> [Frame] {
        buffer.append(contentsOf: bytes)
        return scanBuffer()
    }

    private mutating func scanBuffer() -> [Frame] {
        var frames: [Frame] = []
        scanning: while scan < buffer.count {
            // Inside a container message only nesting, strings and newlines matter: run through it in one go.
            if inMessage && !lineMode && !discarding {
                scanContainer(into: &frames)
                if scan >= buffer.count { break }
                // Not at the size limit: the message ended or a newline was dealt with; look again.
                if !inMessage || scan - start < maxMessage { continue }
            }
            let b = buffer[scan]
            let i = scan
            scan += 1
            if discarding {
                if b == 0x0A { discarding = false; start = scan }
                continue
            }
            if !inMessage {
                if b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0A { start = scan; continue }
                if parsesLines && (b == UInt8(ascii: "{") || b == UInt8(ascii: "[")) {
                    switch line(at: i) {
                    case .parsed(let document, let next):
                        frames.append(.parsed(document))
                        start = next
                        scan = next
                        continue scanning
                    case .waitForNewline:
                        scan = i
                        start = i
                        break scanning
                    case .frameAsUsual:
                        break
                    }
                }
                inMessage = true
                start = i
                if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") { depth = 1 } else { lineMode = true }
                continue
            }
            if lineMode {
                if b == 0x0A { frames.append(.message(Array(buffer[start..<i]))); reset(at: scan) }
            } else if inString {
                if escaped { escaped = false }
                else if b == UInt8(ascii: "\\") { escaped = true }
                else if b == UInt8(ascii: "\"") { inString = false }
                else if b == 0x0A { checkNewline(at: i, into: &frames) }
            } else {
                switch b {
                case UInt8(ascii: "\""): inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    depth -= 1
                    if depth == 0 { frames.append(.message(Array(buffer[start..<scan]))); reset(at: scan) }
                case 0x0A: checkNewline(at: i, into: &frames)
                default: break
                }
            }
            if inMessage && scan - start > maxMessage {
                frames.append(.tooLong)
                reset(at: scan)
                discarding = b != 0x0A
            }
        }
        // What is being discarded is not kept: an endless line costs nothing beyond the current read.
        if discarding { start = scan }
        // Keep the buffer small: drop what is consumed.
        if start > 0 && (start == buffer.count || start > 65536) {
            buffer.removeFirst(start)
            scan -= start
            newlineSearched = max(0, newlineSearched - start)
            start = 0
        }
        // A message framed byte by byte (the line was cut after a `}`, or was not a whole line) is handed out
        // parsed as well, when it parses: the caller has one kind to read.
        if parsesLines {
            for k in frames.indices {
                if case .message(let m) = frames[k], let d = try? JSONDocument(parsing: m) { frames[k] = .parsed(d) }
            }
        }
        return frames
    }

    private enum Line {
        case parsed(JSONDocument, next: Int)
        case waitForNewline
        case frameAsUsual
    }

    /// The message starting at `i` (with `{` or `[`) when it is a whole line: parsed when its newline is here,
    /// waited for while it may still come.
    private mutating func line(at i: Int) -> Line {
        let from = max(i, newlineSearched)
        let newline: Int? = buffer.withUnsafeBufferPointer { p in
            guard from < p.count, let hit = memchr(p.baseAddress! + from, 0x0A, p.count - from) else { return nil }
            return p.baseAddress!.distance(to: hit.assumingMemoryBound(to: UInt8.self))
        }
        guard let newline else {
            newlineSearched = 0
            // Beyond the size limit the ordinary path says `.tooLong`.
            guard buffer.count - i <= maxMessage else { return .frameAsUsual }
            // A message that may be whole without its newline (a peer that sends none) is framed as usual.
            if let last = buffer[i...].last(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0D }),
               last == UInt8(ascii: "}") || last == UInt8(ascii: "]") {
                return .frameAsUsual
            }
            newlineSearched = buffer.count
            return .waitForNewline
        }
        newlineSearched = 0
        guard newline - i <= maxMessage else { return .frameAsUsual }
        let document = buffer.withUnsafeBufferPointer { p in
            try? JSONDocument(parsing: UnsafeBufferPointer(rebasing: p[i..<newline]))
        }
        guard let document else { return .frameAsUsual }
        return .parsed(document, next: newline + 1)
    }

    /// Runs through a container message from `scan` until the byte that closes it, a newline (handed to
    /// `checkNewline`), or the size limit (left to the byte-by-byte path, which says `.tooLong`).
    private mutating func scanContainer(into frames: inout [Frame]) {
        let limit = min(buffer.count, start + maxMessage)
        var d = depth, inStr = inString, esc = escaped
        var i = scan
        var stop: UInt8 = 0
        buffer.withUnsafeBufferPointer { p in
            scanning: while i < limit {
                let c = p[i]
                if inStr {
                    if esc { esc = false }
                    else if c == 0x5C { esc = true }
                    else if c == 0x22 { inStr = false }
                    else if c == 0x0A { stop = c; break scanning }
                } else {
                    switch c {
                    case 0x22: inStr = true
                    case 0x7B, 0x5B: d += 1
                    case 0x7D, 0x5D:
                        d -= 1
                        if d == 0 { stop = c; break scanning }
                    case 0x0A: stop = c; break scanning
                    default: break
                    }
                }
                i += 1
            }
        }
        depth = d
        inString = inStr
        escaped = esc
        guard stop != 0 else { scan = i; return }
        scan = i + 1
        if stop == 0x0A {
            checkNewline(at: i, into: &frames)
        } else {
            frames.append(.message(Array(buffer[start..<scan])))
            reset(at: scan)
        }
    }

    /// At a newline inside an unfinished message: end it there if it can no longer be valid JSON. When the
    /// first error lies after an earlier newline of the message (`{"execute":"x"` then a new line starting a
    /// new object), the message ends at that earlier newline and framing starts again after it.
    private mutating func checkNewline(at i: Int, into frames: inout [Frame], force: Bool = false) {
        guard force || i - start >= 2 * checkedLength else { unfinishedNewline = i; return }
        checkedLength = i - start
        validityChecks += 1
        let text = buffer[start..<i]
        let errorOffset: Int? = text.withContiguousStorageIfAvailable { p in
            do throws(JSONParseError) { _ = try JSONDocument(parsing: p); return nil } catch {
                return error.offset >= p.count ? nil : error.offset
            }
        } ?? nil
        guard let errorOffset else { unfinishedNewline = i; return }
        if let k = buffer[start..<(start + errorOffset)].lastIndex(of: 0x0A) {
            frames.append(.message(Array(buffer[start..<k])))
            reset(at: k + 1)
            scan = k + 1
        } else {
            frames.append(.message(Array(text)))
            reset(at: i + 1)
        }
    }

    /// Whether an unfinished message has a complete line (a line-oriented sender may have made a mistake).
    public var hasUnfinishedLine: Bool { unfinishedNewline != nil }

    /// Ends the unfinished message at its last newline (the caller decided no more is coming: a sender that
    /// types lines has stopped); framing restarts after that newline.
    public mutating func flushUnfinishedLine() -> Frame? {
        guard let nl = unfinishedNewline, nl >= start else { return nil }
        if nl - start > checkedLength {
            // Not checked since it last grew: the message may end at an earlier newline (the rest is framed again
            // at the next `feed`).
            var frames: [Frame] = []
            checkNewline(at: nl, into: &frames, force: true)
            if let first = frames.first { return first }
        }
        let frame = Frame.message(Array(buffer[start..<nl]))
        reset(at: nl + 1)
        scan = nl + 1
        return frame
    }

    /// What came after the last whole message, handed out as it is when the peer ended its stream there (for
    /// the caller to refuse or run); framing starts afresh.
    public mutating func takeRest() -> [UInt8] {
        let rest = Array(buffer[start...])
        buffer.removeAll()
        scan = 0
        newlineSearched = 0
        discarding = false
        reset(at: 0)
        return rest
    }

    private mutating func reset(at position: Int) {
        unfinishedNewline = nil
        checkedLength = 0
        start = position
        depth = 0
        inString = false
        escaped = false
        lineMode = false
        inMessage = false
    }
}
