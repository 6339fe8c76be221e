import ControlProtocol
import Foundation

/// A recording (docs/recording.md): gzip-compressed JSON lines. The first line is the header (format, version,
/// start time, the peer's greeting); each further line is one entry with `t`, nanoseconds since the start:
/// `snapshot` (a `query-snapshot` reply), `event` (an event as received), `reply` + `return` (a query the recorder
/// made and its answer), and `end` (why recording stopped) as the last line of a finished file.
public struct Recording: Sendable {
    public static let format = RecordingHeader.format
    /// Version 2 adds `view` entries (a stock QEMU's recording); a VMM's recordings are still written as version 1.
    public static let version = RecordingHeader.newestVersion

    public typealias Header = RecordingHeader
    public typealias Entry = RecordingEntry

    public var header: Header
    public var entries: [(t: UInt64, entry: Entry)]
    /// Where and why reading stopped before the end of a finished recording; nil when it was read whole.
    public var damage: String?
    /// How recording ended (`end` entry), when it did.
    public var endReason: String? {
        if case .end(let r, _)? = entries.last?.entry { r } else { nil }
    }

    /// The `end` reason the recorder writes when its peer went away (also how recordings from before `peer-gone`
    /// say it).
    public static let peerGoneReason = RecordingEntry.peerGoneReason
    public var durationNs: UInt64 { entries.last?.t ?? 0 }

    /// Reads a recording as far as it is sound. A file that is not a recording, or one from a newer format
    /// version, throws; a truncated or damaged one gives the entries before the damage and says where in
    /// `damage`.
    /// At most `limit` bytes inflated are read (and no more of the file than could inflate to that).
    public static func read(path: String, limit: Int = GzipReader.defaultLimit) throws(RecordingError) -> Recording {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw .io("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        defer { try? handle.close() }
        let data: [UInt8]
        do { data = Array(try handle.read(upToCount: limit) ?? Data()) } catch {
            throw .io("cannot read \(path): \(error.localizedDescription)")
        }
        return try parse(data, limit: limit)
    }

    public static func parse(_ data: [UInt8], limit: Int = GzipReader.defaultLimit) throws(RecordingError) -> Recording {
        let (bytes, gzipDamage) = GzipReader.inflateAll(data, limit: limit)
        return try parse(inflated: bytes, damage: gzipDamage)
    }

    /// The JSON lines once inflated; `damage` is what the gzip layer said, if anything.
    public static func parse(inflated bytes: [UInt8], damage gzipDamage: String? = nil) throws(RecordingError) -> Recording {
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false)
        var damage = gzipDamage
        // The part after the last newline is a line the writer had not finished.
        let tail = lines.removeLast()
        guard let first = lines.first else {
            throw .format(damage.map { "no recording header: \($0)" } ?? "no recording header (the file holds no complete line)")
        }
        var firstLine = Array(first)
        let headerJSON: JSON
        do { headerJSON = try JSON.parse(bytes: &firstLine) } catch { throw .format("the header line is not JSON: \(error)") }
        var recording = Recording(header: try Header(headerJSON), entries: [], damage: nil)
        var lastT: UInt64 = 0
        // What the replay holds is bounded by the values it parses, not only by the bytes it inflates.
        var valuesLeft = Self.maxValues
        for (n, line) in lines.dropFirst().enumerated() {
            let lineNumber = n + 2
            var bytes = Array(line)
            let j: JSON
            do {
                let parsed = try JSON.parse(bytes: &bytes, maxValues: valuesLeft)
                j = parsed.value
                valuesLeft -= parsed.values
            } catch {
                damage = valuesLeft == 0 || error.reason.hasPrefix("more values")
                    ? "line \(lineNumber) takes the recording past \(Self.maxValues) JSON values (what replay holds at most); replay stops after line \(lineNumber - 1)"
                    : "line \(lineNumber) is not JSON; replay stops after line \(lineNumber - 1)"
                break
            }
            guard let (t, entry) = Entry.read(line: j) else {
                damage = "line \(lineNumber) is not a recording entry; replay stops after line \(lineNumber - 1)"
                break
            }
            guard t >= lastT else {
                damage = "line \(lineNumber) goes back in time (t \(t) after \(lastT)); replay stops after line \(lineNumber - 1)"
                break
            }
            lastT = t
            recording.entries.append((t, entry))
        }
        if damage == nil && !tail.isEmpty {
            damage = "the last line (\(lines.count + 1)) is incomplete: \(tail.count) bytes without a newline"
        }
        if damage == nil && recording.endReason == nil {
            damage = "the recording has no end entry: the recorder stopped without finishing it"
        }
        recording.damage = damage.map { "\($0) (\(recording.entries.count) entries read, up to \(Fmt.duration(recording.durationNs)))" }
        return recording
    }

    /// The most JSON values a recording's entries may hold (about 50 bytes each as a tree: with the 256 MiB the
    /// text inflates to at most, a replay holds about 1 GiB whatever the file).
    public static let maxValues = 16_000_000

    static func line(t: UInt64, _ e: Entry) -> JSON { e.line(t: t) }
}

/// Writes a recording as it happens: the header at once, then entries; flushed so that a killed recorder
/// leaves a file that replays up to its last flush.
public final class RecordingWriter {
    public let header: Recording.Header
    private let gzip: GzipWriter
    private var lastFlush: UInt64 = 0
    private var dirty = false
    public private(set) var entries = 0
    public var path: String { gzip.path }
    public var bytesWritten: UInt64 { gzip.bytesWritten }

    public init(path: String, header: Recording.Header) throws(RecordingError) {
        self.header = header
        gzip = try GzipWriter(path: path)
        var bytes: [UInt8] = []
        header.json.write(to: &bytes)
        bytes.append(0x0A)
        try gzip.write(bytes)
        try gzip.flush()
    }

    /// Appends one entry at `monotonicNs` (CLOCK_MONOTONIC); flushes at most every `flushEveryNs`.
    public func append(_ e: Recording.Entry, monotonicNs: UInt64, flushEveryNs: UInt64 = 100_000_000) throws(RecordingError) {
        let t = monotonicNs >= header.startedAtMonotonicNs ? monotonicNs - header.startedAtMonotonicNs : 0
        var bytes: [UInt8] = []
        Recording.line(t: t, e).write(to: &bytes)
        bytes.append(0x0A)
        try gzip.write(bytes)
        entries += 1
        dirty = true
        if monotonicNs &- lastFlush >= flushEveryNs {
            try flush()
            lastFlush = monotonicNs
        }
    }

    public func flush() throws(RecordingError) {
        guard dirty else { return }
        try gzip.flush()
        dirty = false
    }

    /// The `end` entry and the gzip trailer.
    public func finish(reason: String, peerGone: Bool = false, monotonicNs: UInt64) throws(RecordingError) {
        try append(.end(reason: reason, peerGone: peerGone), monotonicNs: monotonicNs, flushEveryNs: .max)
        try gzip.finish()
    }
}

extension Fmt {
    /// "1:02.345" (minutes, seconds, milliseconds) for timelines.
    public static func duration(_ ns: UInt64) -> String {
        let ms = ns / 1_000_000
        let s = ms / 1000
        let frac = String(ms % 1000)
        return "\(s / 60):" + (s % 60 < 10 ? "0" : "") + "\(s % 60)." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
