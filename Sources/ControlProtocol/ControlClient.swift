import DequeModule
import Foundation

/// Why a control-socket call failed.
public enum ControlClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The socket could not be reached or broke.
    case connection(String)
    /// The peer does not speak QMP as expected.
    case protocolError(String)
    /// The command was refused: the reply's error class and text.
    case command(errorClass: String, desc: String)
    case timeout(String)

    public var description: String {
        switch self {
        case .connection(let s): "connection: \(s)"
        case .protocolError(let s): "protocol: \(s)"
        case .command(let c, let d): "\(c): \(d)"
        case .timeout(let s): "timed out: \(s)"
        }
    }
}

/// Who is at the other end, from the greeting.
public enum ControlPeer: Sendable, Equatable {
    /// vmscope's reference VMM, with its protocol version.
    case vmscope(protocolVersion: Int, package: String)
    /// Any other QMP server (a stock QEMU), with its version string.
    case qemu(version: String, package: String)

    /// From a QMP greeting (vmscope's adds `vmscope.protocol`); nil when it is not one.
    public init?(greeting: JSON) {
        guard let version = greeting["QMP"]?["version"] else { return nil }
        let package = version["package"]?.stringValue ?? ""
        if let v = greeting["vmscope"]?["protocol"]?.intValue {
            self = .vmscope(protocolVersion: v, package: package)
        } else {
            let q = version["qemu"]
            let parts = ["major", "minor", "micro"].map { q?[$0]?.intValue.map(String.init) ?? "?" }
            self = .qemu(version: parts.joined(separator: "."), package: package)
        }
    }

    /// As the status bar names it: vmscope's package ("vmscope 0.1.0"), or "QEMU 7.2.22".
    public var name: String {
        switch self {
        case .vmscope(_, let package): package
        case .qemu(let version, _): "QEMU \(version)"
        }
    }
}

/// An event as the client queues it: `MEMORY_FAULT` events already decoded when the client was asked to
/// (`decodeFaults`), everything else as parsed JSON.
public enum ControlEvent: Sendable {
    case faults(FaultBatch)
    case json(JSON)
}

/// A negotiated QMP session: one command at a time or several in flight (replies matched by `id`), events
/// delivered in order.
///
/// A reader thread takes every message off the socket, so events never wait behind a command. Events are
/// kept in a bounded queue (`eventCapacity`); when the reader has to drop the oldest, `eventsDropped` says
/// how many.
public final class ControlClient: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`.
    public let greeting: JSON
    public let peer: ControlPeer
    public let path: String
    /// The process at the other end of the socket (`SO_PEERCRED`): a stock QEMU's pid, which QMP does not say.
    public let serverPID: Int?
    public let eventCapacity: Int
    /// Whether `MEMORY_FAULT` events skip the JSON tree (`FaultBatch.decodeEvent`); `nextEvent` then hands
    /// them out re-encoded, `nextItem` as they are.
    public let decodeFaults: Bool

    private let connection: LineConnection
    private var framer: Framer
    private let lock = NSCondition()
    private var replies: [String: JSON] = [:]
    /// Events not yet taken; a taken one is released at once (a fault batch can hold thousands of records).
    private var events = Deque<ControlEvent>()
    private var dropped: UInt64 = 0
    private var closedReason: String?
    private var nextID = 1
    private var reader: Thread?

    static func seconds(_ ms: Int32) -> String {
        ms % 1000 == 0 ? "\(ms / 1000) s" : String(format: "%.1f s", Double(ms) / 1000)
    }

    /// Connects, reads the greeting and negotiates capabilities.
    public init(path: String, timeoutMs: Int32 = 5000, eventCapacity: Int = 65536,
                decodeFaults: Bool = false) throws(ControlClientError) {
        self.path = path
        self.eventCapacity = eventCapacity
        self.decodeFaults = decodeFaults
        framer = Framer(maxMessage: 64 << 20, decodeFaults: decodeFaults)
        do { connection = try LineConnection(path: path) } catch { throw .connection(error.description) }
        serverPID = peerCredentials(connection.fd).map { Int($0.pid) }
        // The greeting: the first message on the stream.
        var pendingFrames: [Framer.Frame] = []
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        var greetingMessage: JSON?
        while greetingMessage == nil {
            let left = Int64(deadline) - Int64(DispatchTime.now().uptimeNanoseconds)
            guard left > 0 else {
                throw .timeout("no QMP greeting from \(path) within \(Self.seconds(timeoutMs)): it took the connection but said nothing. "
                    + "A QEMU monitor serves one client at a time, so another (libvirt, qmp-shell, another vmscope) may hold it; "
                    + "start QEMU with another -qmp unix:PATH,server=on,wait=off and attach to that")
            }
            let chunk: [UInt8]?
            do { chunk = try connection.readChunk(timeoutMs: Int32(left / 1_000_000) + 1) } catch { throw .connection(error.description) }
            guard let chunk else { throw .connection("\(path) closed before its greeting") }
            if chunk.isEmpty { continue }
            pendingFrames += framer.feed(chunk)
            if let first = pendingFrames.first {
                pendingFrames.removeFirst()
                guard case .message(var bytes) = first, let g = try? JSON.parse(bytes: &bytes) else {
                    throw .protocolError("the first message from \(path) is not JSON")
                }
                greetingMessage = g
            }
        }
        greeting = greetingMessage!
        guard let peer = ControlPeer(greeting: greeting) else {
            throw .protocolError("\(path) did not greet with a QMP object: \(greeting.serialized.prefix(200))")
        }
        self.peer = peer
        for f in pendingFrames { deliver(f) }
        let t = Thread { [self] in readLoop() }
        t.name = "vmscope-qmp-reader"
        reader = t
        t.start()
        _ = try execute("qmp_capabilities", timeoutMs: timeoutMs)
    }

    deinit { connection.shutdown() }

    public func close() {
        connection.shutdown()
        lock.lock()
        if closedReason == nil { closedReason = "closed by this client" }
        lock.broadcast()
        lock.unlock()
    }

    /// Whether the connection is still up (false once the peer went away or `close()` ran).
    public var isConnected: Bool {
        lock.lock(); defer { lock.unlock() }
        return closedReason == nil
    }

    private func readLoop() {
        while true {
            let chunk: [UInt8]?
            do { chunk = try connection.readChunk(timeoutMs: -1) } catch {
                finish(error.description)
                return
            }
            guard let chunk else { finish("\(path) closed the connection"); return }
            for f in framer.feed(chunk) { deliver(f) }
        }
    }

    private func finish(_ reason: String) {
        lock.lock()
        if closedReason == nil { closedReason = reason }
        lock.broadcast()
        lock.unlock()
    }

    private func deliver(_ frame: Framer.Frame) {
        if case .faults(let batch) = frame {
            lock.lock()
            defer { lock.broadcast(); lock.unlock() }
            enqueue(.faults(batch))
            return
        }
        guard case .message(var bytes) = frame else { return }
        if decodeFaults, let batch = FaultBatch.decodeEvent(bytes) {
            lock.lock()
            defer { lock.broadcast(); lock.unlock() }
            enqueue(.faults(batch))
            return
        }
        guard let message = try? JSON.parse(bytes: &bytes) else { return }
        lock.lock()
        defer { lock.broadcast(); lock.unlock() }
        if message["event"] != nil {
            enqueue(.json(message))
        } else if let id = message["id"]?.stringValue {
            replies[id] = message
        } else if let e = message["error"] {
            // An error without id: the server could not read a message of ours.
            replies["<no id>"] = .object([("error", e)])
        }
    }

    /// Caller holds `lock`.
    private func enqueue(_ e: ControlEvent) {
        if events.count >= eventCapacity {
            events.removeFirst()
            dropped += 1
        }
        events.append(e)
    }

    /// Sends a command and waits for its reply; a refusal throws `.command` with the class and text.
    @discardableResult
    public func execute(_ name: String, _ arguments: JSON? = nil, timeoutMs: Int32 = 30_000) throws(ControlClientError) -> JSON {
        lock.lock()
        let id = "vmscope-\(nextID)"
        nextID += 1
        lock.unlock()
        var members: [(String, JSON)] = [("execute", .string(name))]
        if let arguments { members.append(("arguments", arguments)) }
        members.append(("id", .string(id)))
        do { try connection.send(JSON.object(members).serialized) } catch { throw .connection(error.description) }
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        lock.lock()
        defer { lock.unlock() }
        while replies[id] == nil {
            if let closedReason { throw .connection(closedReason) }
            if !lock.wait(until: deadline) && replies[id] == nil { throw .timeout("no reply to \(name)") }
        }
        let reply = replies.removeValue(forKey: id)!
        if let e = reply["error"] {
            throw .command(errorClass: e["class"]?.stringValue ?? "GenericError", desc: e["desc"]?.stringValue ?? "")
        }
        guard let r = reply["return"] else { throw .protocolError("reply without return or error: \(reply.serialized.prefix(200))") }
        return r
    }

    /// The next event in arrival order, waiting up to `timeoutMs`; nil on timeout or when the connection is gone
    /// and every event was taken.
    public func nextEvent(timeoutMs: Int32) -> JSON? {
        switch nextItem(timeoutMs: timeoutMs) {
        case .none: nil
        case .json(let j)?: j
        case .faults(let b)?: b.eventJSON
        }
    }

    /// The next event as queued (decoded fault batches stay decoded).
    public func nextItem(timeoutMs: Int32) -> ControlEvent? {
        let deadline = Date().addingTimeInterval(Double(max(timeoutMs, 0)) / 1000)
        lock.lock()
        defer { lock.unlock() }
        while events.isEmpty {
            if closedReason != nil { return nil }
            if !lock.wait(until: deadline) && events.isEmpty { return nil }
        }
        return events.removeFirst()
    }

    /// Every event received so far, in order.
    public func drainEvents() -> [JSON] {
        lock.lock()
        defer { lock.unlock() }
        let out = events.map { e -> JSON in
            switch e {
            case .json(let j): j
            case .faults(let b): b.eventJSON
            }
        }
        events.removeAll()
        return out
    }

    /// Events this client's own queue dropped because nobody took them.
    public var eventsDropped: UInt64 {
        lock.lock(); defer { lock.unlock() }
        return dropped
    }
}

/// Connects to `path`, retrying with exponential backoff (100 ms doubling to `maxDelayMs`) while
/// `keepTrying` says so; `onRetry` hears each failure and the delay before the next attempt.
public func connectWithBackoff(path: String, maxDelayMs: Int = 2000, keepTrying: () -> Bool,
                               onRetry: (ControlClientError, Int) -> Void = { _, _ in }) -> ControlClient? {
    var delay = 100
    while keepTrying() {
        do throws(ControlClientError) { return try ControlClient(path: path) } catch {
            onRetry(error, delay)
            usleep(useconds_t(delay * 1000))
            delay = min(delay * 2, maxDelayMs)
        }
    }
    return nil
}
