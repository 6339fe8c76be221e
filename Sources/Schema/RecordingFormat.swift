/// The recording file's lines (docs/recording.md): its header and its entries, the one place their member names are
/// spelled. `Recording` (Inspector) reads and writes whole files of them.

/// Why a recording cannot be written or read at all.
public enum RecordingError: Error, Sendable, Equatable, CustomStringConvertible {
    case io(String)
    case format(String)

    public var description: String {
        switch self {
        case .io(let s), .format(let s): s
        }
    }
}

public struct RecordingHeader: Sendable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let format = "format", version = "version", startedAtNs = "started-at-ns"
        static let startedMonotonicNs = "started-monotonic-ns", greeting = "greeting", socket = "socket"
        static let recorder = "recorder"
    }

    public static let format = "vmscope-recording"
    /// Version 2 adds `view` entries (a stock QEMU's recording); a VMM's recordings are still written as version 1.
    public static let newestVersion = 2

    public var version: Int
    public var startedAtWallNs: UInt64
    /// The recorder's CLOCK_MONOTONIC at the start: fault records carry the VMM's, on the same host.
    public var startedAtMonotonicNs: UInt64
    public var socket: String
    public var greeting: JSON
    public var recorder: String

    public init(startedAtWallNs: UInt64, startedAtMonotonicNs: UInt64, socket: String, greeting: JSON, recorder: String) {
        version = 1
        self.startedAtWallNs = startedAtWallNs
        self.startedAtMonotonicNs = startedAtMonotonicNs
        self.socket = socket
        self.greeting = greeting
        self.recorder = recorder
    }

    public var json: JSON {
        .object([(Key.format, .string(RecordingHeader.format)), (Key.version, .i(version)),
                 (Key.startedAtNs, .u(startedAtWallNs)), (Key.startedMonotonicNs, .u(startedAtMonotonicNs)),
                 (Key.socket, .string(socket)), (Key.greeting, greeting), (Key.recorder, .string(recorder))])
    }

    public init(_ j: JSON) throws(RecordingError) {
        guard j[Key.format]?.stringValue == RecordingHeader.format else {
            throw .format("the first line is not a vmscope recording header (no \"format\": \"\(RecordingHeader.format)\")")
        }
        guard let v = j[Key.version]?.intValue else { throw .format("the header has no version") }
        guard v <= RecordingHeader.newestVersion else {
            throw .format("the recording is format version \(v); this vmscope reads version \(RecordingHeader.newestVersion) and older: use a newer vmscope")
        }
        guard v >= 1, let wall = j[Key.startedAtNs]?.uint64Value, let mono = j[Key.startedMonotonicNs]?.uint64Value,
              let greeting = j[Key.greeting], case .object = greeting else {
            throw .format("the header lacks started-at-ns, started-monotonic-ns or greeting")
        }
        version = v
        startedAtWallNs = wall
        startedAtMonotonicNs = mono
        socket = j[Key.socket]?.stringValue ?? "?"
        self.greeting = greeting
        recorder = j[Key.recorder]?.stringValue ?? "?"
    }
}

public enum RecordingEntry: Sendable, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let t = "t", snapshot = "snapshot", event = "event", reply = "reply", `return` = "return"
        static let view = "view", end = "end", peerGone = "peer-gone"
    }

    /// The `end` reason the recorder writes when its peer went away (also how recordings from before `peer-gone`
    /// say it).
    public static let peerGoneReason = "the VMM went away"

    case snapshot(JSON)
    case event(JSON)
    case reply(command: String, value: JSON)
    /// The views as a snapshot document (docs/snapshot.schema.json), without fault records: how a stock QEMU's
    /// recording carries its state (version 2).
    case view(JSON)
    /// Why recording stopped; `peerGone` when the connection ended it (the views end disconnected).
    case end(reason: String, peerGone: Bool)

    public var json: JSON {
        switch self {
        case .snapshot(let j): .object([(Key.snapshot, j)])
        case .event(let j): .object([(Key.event, j)])
        case .reply(let c, let v): .object([(Key.reply, .string(c)), (Key.`return`, v)])
        case .view(let j): .object([(Key.view, j)])
        case .end(let r, let gone): .object([(Key.end, .string(r))] + (gone ? [(Key.peerGone, .bool(true))] : []))
        }
    }

    /// One line of the file: `t` (ns since the start) and the entry; nil when it is not an entry.
    public static func read(line j: JSON) -> (t: UInt64, entry: RecordingEntry)? {
        guard let t = j[Key.t]?.uint64Value, let e = RecordingEntry(j) else { return nil }
        return (t, e)
    }

    /// The entry as a line of the file, at `t`.
    public func line(t: UInt64) -> JSON {
        guard case .object(let m) = json else { return .null }
        return .object([(Key.t, .u(t))] + m)
    }

    init?(_ j: JSON) {
        if let s = j[Key.snapshot], case .object = s { self = .snapshot(s) }
        else if let e = j[Key.event], e[Key.event]?.stringValue != nil { self = .event(e) }
        else if let c = j[Key.reply]?.stringValue, let v = j[Key.`return`] { self = .reply(command: c, value: v) }
        else if let v = j[Key.view], case .object = v { self = .view(v) }
        else if let r = j[Key.end]?.stringValue {
            // Recordings made before `peer-gone` existed say it only in the reason's words.
            self = .end(reason: r, peerGone: j[Key.peerGone]?.boolValue ?? r.hasPrefix(RecordingEntry.peerGoneReason))
        }
        else { return nil }
    }
}
