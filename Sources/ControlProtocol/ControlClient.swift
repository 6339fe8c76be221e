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
        guard let g = QMP.Greeting(greeting) else { return nil }
        if let v = g.vmscopeProtocol {
            self = .vmscope(protocolVersion: v, package: g.package)
        } else {
            let parts = [g.major, g.minor, g.micro].map { $0.map(String.init) ?? "?" }
            self = .qemu(version: parts.joined(separator: "."), package: g.package)
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

    /// The event, typed.
    public var event: Event {
        switch self {
        case .faults(let b): .memoryFault(b)
        case .json(let j): Event(message: j) ?? .other(name: "", data: j)
        }
    }

    /// The event as a message: as it came, or (a batch read straight from its document) as the server writes one, without
    /// its timestamp.
    public var message: JSON {
        switch self {
        case .faults(let b): Event.memoryFault(b).message()
        case .json(let j): j
        }
    }
}

/// A negotiated QMP session: one command at a time or several in flight (replies matched by `id`), events
/// delivered in order.
///
/// A reader thread takes every message off the socket, so events never wait behind a command. Events are
/// kept in a bounded queue (`eventCapacity` events and `maxEventBytes`); when the reader has to drop the
/// oldest, `eventsDropped` says how many.
///
/// What a server can make it hold is bounded (docs/reliability.md): one message being framed (`maxMessage`),
/// the event queue, and replies to commands still waiting (a reply nobody waits for — late after a timeout,
/// or an id we never sent — is dropped and counted in `strayReplies`). A message that is not JSON, or longer
/// than `maxMessage`, closes the connection with that reason. The reader thread holds the connection, not the
/// client: a client dropped without `close()` is released, and its socket and thread with it.
public final class ControlClient: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `lock`.
    public let greeting: JSON
    public let peer: ControlPeer
    public let path: String
    /// The reader thread's name in the kernel (`/proc/PID/task/TID/comm`, at most 15 bytes).
    public static let readerThreadName = "vmscope/qmp-in"
    /// The process at the other end of the socket (`SO_PEERCRED`): a stock QEMU's pid, which QMP does not say.
    public let serverPID: Int?
    public let eventCapacity: Int
    /// Whether `MEMORY_FAULT` events skip the JSON tree (read from their document, `FaultBatch(event:)`); `nextEvent` then hands
    /// them out re-encoded, `nextItem` as they are.
    public let decodeFaults: Bool

    /// The longest message taken from the server.
    public let maxMessage: Int
    /// Bytes of queued events at most (as received; a decoded fault batch counts 160 bytes a record).
    public let maxEventBytes: Int

    private let connection: LineConnection
    private var framer: Framer
    private let lock = NSCondition()
    /// Ids of commands waiting for their reply; only their replies are kept.
    private var waiting: Set<String> = []
    private var replies: [String: JSON] = [:]
    /// An error without id (the server could not read a message of ours): every waiting command gets it.
    private var idlessError: (errorClass: String, desc: String)?
    /// How many errors without id came (a command waits for one that comes after it was sent).
    private var idlessErrors = 0
    private var stray: UInt64 = 0
    /// Events not yet taken; a taken one is released at once (a fault batch can hold thousands of records).
    private var events = Deque<(event: ControlEvent, bytes: Int)>()
    private var eventBytes = 0
    private var dropped: UInt64 = 0
    /// Where the session is, as QEMU's python/qmp `Runstate` has it: negotiating until `qmp_capabilities` is
    /// answered, running, then closed with the reason (the peer closed, broke the protocol, or `close()` ran).
    /// Nothing leaves `closed`.
    public enum State: Sendable, Equatable {
        case negotiating
        case running
        case closed(reason: String)
    }
    private var stateValue = State.negotiating
    /// The reason once closed; caller holds `lock`.
    private var closedReason: String? { if case .closed(let r) = stateValue { r } else { nil } }
    /// Closes with `reason` unless closed already; caller holds `lock`.
    private func close(because reason: String) {
        if closedReason == nil { stateValue = .closed(reason: reason) }
    }
    private var nextID = 1
    private var reader: Thread?

    static func seconds(_ ms: Int32) -> String {
        ms % 1000 == 0 ? "\(ms / 1000) s" : String(format: "%.1f s", Double(ms) / 1000)
    }

    /// Connects, reads the greeting and negotiates capabilities.
    public init(path: String, timeoutMs: Int32 = 5000, eventCapacity: Int = 65536,
                decodeFaults: Bool = false, maxMessage: Int = 16 << 20, maxEventBytes: Int = 64 << 20) throws(ControlClientError) {
        self.path = path
        self.eventCapacity = eventCapacity
        self.decodeFaults = decodeFaults
        self.maxMessage = maxMessage
        self.maxEventBytes = maxEventBytes
        framer = Framer(maxMessage: maxMessage, parsesLines: true)
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
                guard case .parsed(let g) = first else { throw .protocolError("the first message from \(path) is not JSON") }
                greetingMessage = g.json
            }
        }
        greeting = greetingMessage!
        guard let peer = ControlPeer(greeting: greeting) else {
            throw .protocolError("\(path) did not greet with a QMP object: \(greeting.serialized.prefix(200))")
        }
        self.peer = peer
        for f in pendingFrames where !deliver(f) { connection.shutdown(); break }
        // The thread holds the connection and only a weak reference to the client (see the type's comment).
        let t = Thread { [weak self, connection] in
            nameCurrentThread(Self.readerThreadName)
            Self.readLoop(connection) { [weak self] in self }
        }
        reader = t
        t.start()
        _ = try run(QMPCapabilities(), timeoutMs: timeoutMs)
        lock.lock()
        if stateValue == .negotiating { stateValue = .running }
        lock.unlock()
    }

    /// The session's state now.
    public var state: State {
        lock.lock(); defer { lock.unlock() }
        return stateValue
    }

    deinit { connection.shutdown() }

    public func close() {
        // The reason first, then the shutdown: the reader thread wakes on the shutdown's end of stream and would
        // otherwise record "closed the connection" before this (the first reason stays).
        lock.lock()
        close(because: "closed by this client")
        lock.broadcast()
        lock.unlock()
        connection.shutdown()
    }

    /// Why the connection ended (the peer closed it, broke the protocol, or `close()` ran); nil while it is up.
    public var closeReason: String? {
        lock.lock(); defer { lock.unlock() }
        return closedReason
    }

    /// Whether the connection is still up (false once the peer went away or `close()` ran).
    public var isConnected: Bool {
        lock.lock(); defer { lock.unlock() }
        return closedReason == nil
    }

    private static func readLoop(_ connection: LineConnection, _ client: () -> ControlClient?) {
        while true {
            let chunk: [UInt8]?
            do { chunk = try connection.readChunk(timeoutMs: -1) } catch {
                client()?.finish(error.description)
                return
            }
            guard let c = client() else { return }  // dropped: nobody to deliver to
            guard let chunk else { c.finish("\(c.path) closed the connection"); return }
            for f in c.framer.feed(chunk) where !c.deliver(f) {
                connection.shutdown()
                return
            }
        }
    }

    private func finish(_ reason: String) {
        lock.lock()
        close(because: reason)
        lock.broadcast()
        lock.unlock()
    }

    /// Takes one message; false (with the reason recorded) when the server broke the protocol and the
    /// connection is to be closed.
    private func deliver(_ frame: Framer.Frame) -> Bool {
        let bytes: [UInt8], size: Int
        let message: JSON
        switch frame {
        case .tooLong:
            finish("\(path) sent a message longer than \(maxMessage) bytes; the connection is closed")
            return false
        case .parsed(let document):
            if decodeFaults, let batch = FaultBatch(event: document) {
                lock.lock()
                defer { lock.broadcast(); lock.unlock() }
                enqueue(.faults(batch), bytes: document.count)
                return true
            }
            message = document.json
            bytes = Array(document.bytes.prefix(80))
            size = document.count
        case .message(let b):
            bytes = b
            size = b.count
            var text = bytes
            do { message = try JSON.parse(bytes: &text) } catch {
                finish("\(path) sent a message that is not JSON (\(error)): \(String(decoding: bytes.prefix(80), as: UTF8.self))")
                return false
            }
        }
        guard message.objectMembers != nil else {
            finish("\(path) sent a \(message.typeName) where QMP has an object: \(String(decoding: bytes.prefix(80), as: UTF8.self))")
            return false
        }
        lock.lock()
        defer { lock.broadcast(); lock.unlock() }
        switch QMP.Message(message) {
        case .event:
            enqueue(.json(message), bytes: size)
        case .reply(_, let id?), .error(_, _, let id?):
            if let id = id.stringValue, waiting.contains(id) { replies[id] = message } else { stray += 1 }
        case .error(let c, let d, nil) where !waiting.isEmpty:
            // An error without id: the server could not read a message of ours; whoever waits hears it.
            idlessErrors += 1
            idlessError = (c, d + " (an error without id: the server could not read a command)")
        default:
            stray += 1  // late after a timeout, an id we never sent, or a greeting-like object: dropped
        }
        return true
    }

    /// Caller holds `lock`.
    private func enqueue(_ e: ControlEvent, bytes: Int) {
        while let first = events.first, events.count >= eventCapacity || eventBytes + bytes > maxEventBytes {
            events.removeFirst()
            eventBytes -= first.bytes
            dropped += 1
        }
        events.append((e, bytes))
        eventBytes += bytes
    }

    /// Commands sent so far on this connection (each is one round trip).
    public var commandsSent: Int {
        lock.lock(); defer { lock.unlock() }
        return nextID - 1
    }

    /// Replies that matched no waiting command (late after a timeout, or ids this client never sent): dropped.
    public var strayReplies: UInt64 {
        lock.lock(); defer { lock.unlock() }
        return stray
    }

    /// Sends a command and waits for its reply; a refusal throws `.command` with the class and text.
    @discardableResult
    public func execute(_ name: String, _ arguments: JSON? = nil, timeoutMs: Int32 = 30_000) throws(ControlClientError) -> JSON {
        lock.lock()
        // Closed already (the server broke the protocol, or went away): say why, not what sending finds.
        if let closedReason { lock.unlock(); throw .connection(closedReason) }
        let id = "vmscope-\(nextID)"
        nextID += 1
        waiting.insert(id)
        let idlessSeen = idlessErrors
        lock.unlock()
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        do { try connection.send(QMP.command(name, arguments, id: .string(id)).serialized) } catch {
            lock.lock(); waiting.remove(id); let reason = closedReason; lock.unlock()
            throw .connection(reason ?? error.description)
        }
        lock.lock()
        defer {
            // Whatever happened, this id is no longer waited for: a reply that comes later is dropped.
            waiting.remove(id)
            replies.removeValue(forKey: id)
            lock.unlock()
        }
        while replies[id] == nil {
            if idlessErrors > idlessSeen, let e = idlessError { throw .command(errorClass: e.errorClass, desc: e.desc) }
            if let closedReason { throw .connection(closedReason) }
            if !lock.wait(until: deadline) && replies[id] == nil { throw .timeout("no reply to \(name)") }
        }
        let reply = replies[id]!
        switch QMP.Message(reply) {
        case .error(let c, let d, _): throw .command(errorClass: c, desc: d)
        case .reply(let r, _): return r
        default: throw .protocolError("reply without return or error: \(reply.serialized.prefix(200))")
        }
    }

    /// Runs a typed command and reads its reply.
    @discardableResult
    public func run<C: SchemaCommand>(_ command: C, timeoutMs: Int32 = 30_000) throws(ControlClientError) -> C.Reply {
        C.reply(try execute(C.name.rawValue, command.arguments, timeoutMs: timeoutMs))
    }

    /// The next event in arrival order, waiting up to `timeoutMs`; nil on timeout or when the connection is gone
    /// and every event was taken.
    public func nextEvent(timeoutMs: Int32) -> JSON? {
        nextItem(timeoutMs: timeoutMs)?.message
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
        let first = events.removeFirst()
        eventBytes -= first.bytes
        return first.event
    }

    /// Every event received so far, in order.
    public func drainEvents() -> [JSON] {
        lock.lock()
        defer { lock.unlock() }
        let out = events.map { $0.event.message }
        events.removeAll()
        eventBytes = 0
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
