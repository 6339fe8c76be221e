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
    }

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

    public init(maxMessage: Int = QMP.maxLine) { self.maxMessage = maxMessage }

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
        while scan < buffer.count {
            // Inside a string nothing but a quote, a backslash or a newline matters: skip ahead to the next one.
            if inString && !escaped && !discarding && !lineMode {
                let next = buffer.withUnsafeBufferPointer { p -> Int in
                    var i = scan
                    while i < p.count {
                        let c = p[i]
                        if c == 0x22 || c == 0x5C || c == 0x0A { break }
                        i += 1
                    }
                    return i
                }
                if inMessage && next - start > maxMessage { scan = start + maxMessage }
                else { scan = next }
                if scan >= buffer.count { break }
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
        // Keep the buffer small: drop what is consumed.
        if start > 0 && (start == buffer.count || start > 65536) {
            buffer.removeFirst(start)
            scan -= start
            start = 0
        }
        return frames
    }

    /// At a newline inside an unfinished message: end it there if it can no longer be valid JSON. When the
    /// first error lies after an earlier newline of the message (`{"execute":"x"` then a new line starting a
    /// new object), the message ends at that earlier newline and framing starts again after it.
    private mutating func checkNewline(at i: Int, into frames: inout [Frame]) {
        let text = buffer[start..<i]
        let errorOffset: Int? = text.withContiguousStorageIfAvailable { p in
            do throws(JSONParseError) { _ = try JSON.parse(p); return nil } catch {
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
        let frame = Frame.message(Array(buffer[start..<nl]))
        reset(at: nl + 1)
        scan = nl + 1
        return frame
    }

    private mutating func reset(at position: Int) {
        unfinishedNewline = nil
        start = position
        depth = 0
        inString = false
        escaped = false
        lineMode = false
        inMessage = false
    }
}
