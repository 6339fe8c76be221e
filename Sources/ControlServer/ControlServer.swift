import ControlProtocol
import DequeModule
import Foundation
import Logging
import Synchronization
import VMM

/// The control socket's server: QMP framing, vmscope's commands, events to every negotiated client.
///
/// One thread runs everything: it polls the listener and the clients, runs commands against the VMM, and
/// every tick copies new events from the VMM's bounded logs into each client's output. The vCPU threads only
/// append to those logs, so they never wait for a client; a client that stops reading falls behind in the
/// logs, and what it missed comes back to it as `dropped` counts.
public final class ControlServer: @unchecked Sendable {
    // @unchecked: `clients` and the other state are touched by the server thread only; `stopFlag` is atomic.
    public struct Options: Sendable {
        /// How often new events are looked for while a client is negotiated.
        public var tickMs: Int32 = 2
        /// `MEMORY_FAULT` events go to a client at most this often (records are batched in between).
        public var faultBatchNs: UInt64 = 10_000_000
        /// Output a client has not read beyond which nothing new is queued for it: no events (they become
        /// `dropped`) and no commands run (its input waits in the kernel's socket buffer) ...
        public var maxPendingOutput = 4 << 20
        /// ... nor beyond its share of this, the unread output of all clients together (at least 256 KiB each).
        public var maxTotalOutput = 32 << 20
        /// Records in one `MEMORY_FAULT` event at most (about 14 KB of JSON: a reply queued behind an event waits
        /// for at most that much, on the lab's slow link too) ...
        public var maxRecordsPerEvent = 64
        /// ... and in the events one client gets at once, for every `faultBatchNs` since it last got some (a
        /// late turn of the server thread sends what the time owed, up to four times this): 102,400 records a
        /// second to a client that keeps up, whenever the server gets the CPU.
        public var maxRecordsPerBatch = 1024
        /// A line that leaves a message unfinished is taken as the whole message (and refused) when nothing
        /// more arrives for this long: `socat` users get their error, multi-line senders are not cut.
        public var unfinishedLineNs: UInt64 = 500_000_000
        /// Uids allowed besides root.
        public var allowedUID: uid_t = geteuid()
        /// Connections served at once; one more gets a one-line refusal. With the per-client bounds below this
        /// bounds the server's memory whatever the clients do (docs/reliability.md, "Bounds").
        public var maxClients = 64
        /// Messages run in one client's turn (the client that used the least time lately goes next) ...
        public var messagesPerTurn = 8
        /// ... or this long, whichever comes first (at least one message runs): a client that sends hundreds of
        /// slow commands at once cannot keep another's `query-vm` waiting.
        public var turnNs: UInt64 = 5_000_000
        public init() {}
    }

    final class Client {
        let fd: Int32
        let id: Int
        let pid: pid_t
        let uid: uid_t
        var framer = Framer()
        /// Messages framed but not yet run (one read's worth at most: nothing more is read until they ran).
        var inbox = Deque<[UInt8]>()
        /// The peer shut down its sending side: what it sent is run, its replies are sent, then it is closed.
        var inputEnded = false
        var lastInput: UInt64 = 0
        /// Time spent running this client's commands lately (halved every 100 ms): who goes next.
        var recentWorkNs: UInt64 = 0
        /// Its inbox was filled by a short read after it had been idle: its first turn comes before the others'.
        var interactive = false
        var output: [UInt8] = []
        var outputStart = 0
        var negotiated = false
        var closed = false
        /// Whether events are sent to it (`set-events`).
        var eventsEnabled = true
        var faultCursor: UInt64 = 0
        var eventCursor: UInt64 = 0
        var lastFaultEvent: UInt64 = 0
        var eventsDropped: UInt64 = 0
        init(fd: Int32, id: Int, pid: pid_t, uid: uid_t) { self.fd = fd; self.id = id; self.pid = pid; self.uid = uid }
        var pendingOutput: Int { output.count - outputStart }

        /// Queues `line`. Past 1 MiB the output makes room for all its bound at once: growing by doubling copied
        /// the backlog each time and, at the 4 MiB bound, held it twice (two such clients took a VMM 17 MiB over
        /// its baseline in CI, over the 16 MiB docs/reliability.md states). Capacity not written to costs no memory.
        func append(_ line: [UInt8], bound: Int) {
            if output.count + line.count > output.capacity && outputStart > 0 {  // what was sent goes first, in place
                output.removeFirst(outputStart)
                outputStart = 0
            }
            let n = output.count + line.count
            if n > output.capacity {
                output.reserveCapacity(n > 1 << 20 ? max(n, bound + (64 << 10)) : max(n, 2 * output.capacity))
            }
            output += line
        }
    }

    public let vmm: ReferenceVMM
    public let listener: UnixListener
    let options: Options
    let logger: Logger
    let commands: CommandTable
    private var clients: [Client] = []
    private var nextID = 1
    private let stopFlag = Atomic<Bool>(false)
    private let wakePipe: (read: Int32, write: Int32)
    private var thread: Thread?
    private let finished = NSCondition()
    private var isFinished = false
    /// Wall-clock nanoseconds minus monotonic ones, for event timestamps.
    private let wallOffset: Int64
    private let clientCount = Atomic<Int>(0)
    private var lastWorkDecay: UInt64 = 0
    /// Events encoded this pass, by sequence number, and fault batches by where they start and how many records
    /// they may hold: clients at the same place in the logs (most of them) share one encoding. Encoding a copy for
    /// each cost the lab's slow guest most of the server's time with a few dozen clients, and their commands waited.
    private var encodedEvents: [UInt64: [UInt8]] = [:]
    private var encodedFaults: [FaultBatchKey: (bytes: [UInt8], cursor: UInt64)] = [:]
    private struct FaultBatchKey: Hashable { var after: UInt64; var limit: Int }

    public init(vmm: ReferenceVMM, listener: UnixListener, options: Options = Options(),
                logger: Logger = Logger(label: "vmscope.control")) {
        self.vmm = vmm
        self.listener = listener
        self.options = options
        self.logger = logger
        self.commands = CommandTable(vmm: vmm)
        var fds: [Int32] = [0, 0]
        pipe(&fds)
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        wakePipe = (fds[0], fds[1])
        let mono = HostClock.monotonicNs(), wall = HostClock.wallNs()
        wallOffset = Int64(bitPattern: wall &- mono)
    }

    deinit {
        close(wakePipe.read)
        close(wakePipe.write)
    }

    /// Connected clients (negotiated or not).
    public var connectedClients: Int { clientCount.load(ordering: .relaxed) }

    /// The server thread's name in the kernel (`/proc/PID/task/TID/comm`, at most 15 bytes).
    public static let threadName = "vmscope/control"

    public func start() {
        let t = Thread { [self] in
            nameCurrentThread(Self.threadName)
            run()
            finished.lock(); isFinished = true; finished.broadcast(); finished.unlock()
        }
        thread = t
        t.start()
    }

    /// Stops serving: closes every client and waits for the server thread. The listener stays for the owner.
    public func stop() {
        stopFlag.store(true, ordering: .relaxed)
        var b: UInt8 = 1
        _ = write(wakePipe.write, &b, 1)
        guard thread != nil else { return }
        finished.lock()
        while !isFinished { finished.wait() }
        finished.unlock()
    }

    // MARK: The loop

    private func run() {
        while !stopFlag.load(ordering: .relaxed) {
            var fds = [pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)]
            let limit = outputLimit
            for c in clients {
                // Read only what can be run now: while a client's messages wait, or its replies pile up unread,
                // its bytes stay in the kernel's socket buffer (which holds the sender back).
                let wantInput = !c.inputEnded && c.inbox.isEmpty && c.pendingOutput < limit
                fds.append(pollfd(fd: c.fd, events: (wantInput ? Int16(POLLIN) : 0) | (c.pendingOutput > 0 ? Int16(POLLOUT) : 0),
                                  revents: 0))
            }
            let busy = clients.contains { !$0.inbox.isEmpty && $0.pendingOutput < limit }
            let timeout: Int32 = busy ? 0 : clients.contains { $0.negotiated } ? options.tickMs : 100
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 && errno != EINTR {
                logger.error("poll failed; control server stops", metadata: ["errno": "\(errno)"])
                break
            }
            if fds[0].revents != 0 { drainWakePipe() }
            for (i, c) in clients.enumerated() where !c.closed {
                let r = fds.count > i + 2 ? fds[i + 2].revents : 0
                if r & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !c.inputEnded && c.inbox.isEmpty { readFrom(c) }
                if r & Int16(POLLERR) != 0 { c.closed = true }
            }
            // Those that left go before newcomers come in: a client that hung up as another connected leaves its place
            // to it (accepted first, the newcomer was refused as one too many, its place free: 63 of a relay's 64 lab
            // clients answered once, the 64th refused beside a probe's connection that had just closed).
            if fds[1].revents & Int16(POLLIN) != 0 {
                closeFinished()
                reap()
                acceptAll()
            }
            var now = monotonic()
            for c in clients where !c.closed && c.inbox.isEmpty && c.framer.hasUnfinishedLine
                && (c.inputEnded || now - c.lastInput > options.unfinishedLineNs) {
                if case .message(let m)? = c.framer.flushUnfinishedLine() { c.inbox.append(m) }
                frame(c, [])
            }
            // One turn a pass. A client whose messages came after it was idle (everything it sent fit one read)
            // goes first; then the one that used the least time lately. So a client sending one command waits
            // behind at most one turn of another's, however many others send bursts.
            if let c = clients.filter({ !$0.closed && !$0.inbox.isEmpty && $0.pendingOutput < limit })
                .min(by: { ($0.interactive ? 0 : 1, $0.recentWorkNs) < ($1.interactive ? 0 : 1, $1.recentWorkNs) }) {
                c.interactive = false
                let started = monotonic()
                let turnEnd = started + options.turnNs
                var ran = 0
                while let m = c.inbox.popFirst() {
                    handleMessage(c, m)
                    ran += 1
                    if ran >= options.messagesPerTurn || c.pendingOutput >= limit || monotonic() >= turnEnd { break }
                }
                if c.inbox.isEmpty { c.inbox = Deque() }  // a burst's storage is not kept
                c.recentWorkNs += monotonic() - started
            }
            now = monotonic()
            if now - lastWorkDecay > 100_000_000 {
                for c in clients { c.recentWorkNs /= 2 }
                lastWorkDecay = now
            }
            for c in clients where c.negotiated && !c.closed { pumpEvents(c, now: now) }
            encodedEvents.removeAll(keepingCapacity: true)
            encodedFaults.removeAll(keepingCapacity: true)
            for c in clients where !c.closed && c.pendingOutput > 0 { flush(c) }
            closeFinished()
            reap()
        }
        for c in clients { close(c.fd) }
        clients.removeAll()
        clientCount.store(0, ordering: .relaxed)
    }

    /// How much unread output a client may have before nothing more is queued for it.
    private var outputLimit: Int {
        min(options.maxPendingOutput, max(256 << 10, options.maxTotalOutput / max(1, clients.count)))
    }

    private func drainWakePipe() {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(wakePipe.read, &buf, 64) > 0 {}
    }

    private func monotonic() -> UInt64 { HostClock.monotonicNs() }

    private func wall(_ monotonicNs: UInt64) -> UInt64 { UInt64(Int64(monotonicNs) + wallOffset) }

    private func acceptAll() {
        while let fd = listener.accept() {
            guard let cred = peerCredentials(fd) else { close(fd); continue }
            if cred.uid != 0 && cred.uid != options.allowedUID {
                refuse(fd, .permissionDenied, "uid \(cred.uid) may not use this VMM's control socket; only root and uid \(options.allowedUID) may",
                       log: "refused a client", ["uid": "\(cred.uid)", "pid": "\(cred.pid)"])
                continue
            }
            if clients.count >= options.maxClients {
                refuse(fd, .genericError, "this VMM serves \(options.maxClients) clients at once; try again when one has gone",
                       log: "refused a client: too many", ["pid": "\(cred.pid)", "clients": "\(clients.count)"])
                continue
            }
            let c = Client(fd: fd, id: nextID, pid: cred.pid, uid: cred.uid)
            nextID += 1
            clients.append(c)
            clientCount.store(clients.count, ordering: .relaxed)
            queue(QMP.greeting, to: c)
            logger.debug("client connected", metadata: ["client": "\(c.id)", "pid": "\(cred.pid)"])
        }
    }

    /// Refused before anything else: one error line, then the connection closes.
    private func refuse(_ fd: Int32, _ errorClass: QMP.ErrorClass, _ desc: String, log: Logger.Message, _ metadata: Logger.Metadata) {
        let line = QMP.error(errorClass, desc, id: nil).serialized + "\n"
        _ = line.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        close(fd)
        logger.warning(log, metadata: metadata)
    }

    /// A client that is done sending is closed once it has everything it asked for.
    private func closeFinished() {
        for c in clients where c.inputEnded && !c.closed && c.inbox.isEmpty && c.pendingOutput == 0 && c.framer.pendingBytes == 0 {
            c.closed = true
        }
    }

    private func reap() {
        let before = clients.count
        clients.removeAll { c in
            if c.closed { close(c.fd); logger.debug("client gone", metadata: ["client": "\(c.id)"]) }
            return c.closed
        }
        if clients.count != before { clientCount.store(clients.count, ordering: .relaxed) }
    }

    // MARK: Input

    /// One read (at most 64 KiB) a turn: its messages go to the inbox, to be run in turns.
    private func readFrom(_ c: Client) {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !c.closed {
            let n = chunk.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, 65536, 0) }
            if n == 0 {
                // The peer shut down its sending side (`printf ... | socat`): run what it sent, answer, then close.
                c.inputEnded = true
                frame(c, [])
                return
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { c.closed = true }
                return
            }
            c.lastInput = monotonic()
            c.interactive = n < chunk.count
            frame(c, chunk[0..<n])
            return
        }
    }

    /// Frames `bytes` into the client's inbox; at the end of its input, what is left is one last message.
    private func frame(_ c: Client, _ bytes: ArraySlice<UInt8>) {
        for frame in c.framer.feed(bytes) {
            switch frame {
            case .message(let m): c.inbox.append(m)
            case .parsed(let d): c.inbox.append(Array(d.bytes))  // only a framer made with parsesLines gives these
            case .tooLong:
                c.inbox.append(Self.tooLongMarker)
            }
        }
        if c.inputEnded && c.framer.pendingBytes > 0 {
            if case .message(let m)? = c.framer.flushUnfinishedLine() { c.inbox.append(m) }
            if c.framer.pendingBytes > 0 { c.inbox.append(c.framer.takeRest()) }
        }
    }

    /// Stands in the inbox for a message that was too long (no message is empty: blank input frames nothing).
    private static let tooLongMarker: [UInt8] = []

    /// Frames and runs `bytes` at once (the fuzzer's path, with no socket and no turns).
    private func processInput(_ c: Client, _ bytes: ArraySlice<UInt8>) {
        frame(c, bytes)
        while let m = c.inbox.popFirst() { handleMessage(c, m) }
    }

    private func handleMessage(_ c: Client, _ message: [UInt8]) {
        if message.isEmpty {
            queue(QMP.error(.genericError, "message longer than \(QMP.maxLine) bytes; discarded up to the next newline", id: nil), to: c)
            return
        }
        var bytes = message
        while let last = bytes.last, last == 0x0D || last == 0x20 || last == 0x09 { bytes.removeLast() }
        if bytes.isEmpty { return }
        let message: JSON
        do { message = try JSON.parse(bytes: &bytes) } catch {
            queue(QMP.error(.genericError, "JSON parse error: \(error)", id: nil), to: c)
            return
        }
        guard case .object(let members) = message else {
            queue(QMP.error(.genericError, "QMP input must be a JSON object, not \(message.typeName)", id: nil), to: c)
            return
        }
        let id = QMP.id(of: message)
        if let unknown = members.first(where: { !QMP.commandMembers.contains($0.0) }) {
            let desc = unknown.0 == QMP.outOfBandMember ? "out-of-band execution is not offered (capabilities are [])"
                : "QMP input member '\(unknown.0)' is unexpected"
            queue(QMP.error(.genericError, desc, id: id), to: c)
            return
        }
        guard case .command(let name?, let arguments, _) = QMP.Message(message) else {
            queue(QMP.error(.genericError, "QMP input lacks member 'execute' (a string naming the command)", id: id), to: c)
            return
        }
        if !c.negotiated {
            guard name == CommandName.qmpCapabilities.rawValue else {
                queue(QMP.error(.commandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'", id: id), to: c)
                return
            }
            do throws(CommandError) {
                var args = try Arguments(arguments)
                if let first = try QMPCapabilities(&args).enable?.first {
                    throw CommandError(.genericError, "Capability '\(first)' is not available")
                }
            } catch {
                queue(QMP.error(error.errorClass, error.desc, errno: error.errno, id: id), to: c)
                return
            }
            c.negotiated = true
            // Events from now on, not the history before.
            c.faultCursor = vmm.faults.total
            c.eventCursor = vmm.events.lastSeq
            queue(QMP.reply(.object([]), id: id), to: c)
            return
        }
        if name == CommandName.setEvents.rawValue {
            do throws(CommandError) {
                var args = try Arguments(arguments)
                let command = try SetEvents(&args)
                if command.enabled && !c.eventsEnabled {
                    // From now on: what went by while they were off is not owed.
                    c.faultCursor = vmm.faults.total
                    c.eventCursor = vmm.events.lastSeq
                }
                c.eventsEnabled = command.enabled
                queue(QMP.reply(Empty().json, id: id), to: c)
            } catch {
                queue(QMP.error(error.errorClass, error.desc, errno: error.errno, id: id), to: c)
            }
            return
        }
        let audited = CommandName(rawValue: name)?.isAudited ?? false
        do throws(CommandError) {
            let result = try commands.run(name, arguments)
            queue(QMP.reply(result, id: id), to: c)
            if audited { audit(c, name, arguments, outcome: "done") }
        } catch {
            queue(QMP.error(error.errorClass, error.desc, errno: error.errno, id: id), to: c)
            if audited { audit(c, name, arguments, outcome: "refused: \(error.errorClass.rawValue): \(error.desc)") }
        }
    }

    /// One line per mutating (or memory-reading) command, done or refused: who asked, what, and how it went.
    private func audit(_ c: Client, _ name: String, _ arguments: JSON?, outcome: String) {
        // Arguments as sent, up to 512 characters: a client cannot make the log carry a megabyte line.
        let text = arguments?.serialized ?? "{}"
        let shown = text.count <= 512 ? text : text.prefix(512) + "… (\(text.utf8.count) bytes)"
        logger.notice("audit", metadata: [
            "command": "\(name)", "arguments": "\(shown)", "client": "\(c.id)",
            "pid": "\(c.pid)", "uid": "\(c.uid)", "outcome": "\(outcome)",
        ])
    }

    /// The bytes a client would receive for `input`, sent on a fresh connection from (`pid`, `uid`): the
    /// protocol without a socket, for the fuzzer. Only while the server thread is not running.
    public func respond(to input: [UInt8], pid: pid_t = 0, uid: uid_t = 0) -> [UInt8] {
        precondition(thread == nil, "respond(to:) is for a server that was not started")
        let c = Client(fd: -1, id: 0, pid: pid, uid: uid)
        queue(QMP.greeting, to: c)
        processInput(c, input[...])
        return c.output
    }

    // MARK: Output

    private func queue(_ message: JSON, to c: Client) {
        c.append(Self.line(message), bound: outputLimit)
    }

    /// `message` as the line a client reads (for the encodings clients share).
    private static func line(_ message: JSON) -> [UInt8] {
        var bytes: [UInt8] = []
        message.write(to: &bytes)
        bytes.append(0x0A)
        return bytes
    }

    private func flush(_ c: Client) {
        while c.pendingOutput > 0 {
            let n = c.output.withUnsafeBytes {
                send(c.fd, $0.baseAddress! + c.outputStart, c.pendingOutput, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { c.closed = true }
                break
            }
            c.outputStart += n
        }
        if c.outputStart == c.output.count {
            c.output.removeAll(keepingCapacity: c.output.capacity <= 1 << 20)
            c.outputStart = 0
        } else if c.outputStart > 1 << 20 {
            c.output.removeFirst(c.outputStart)
            c.outputStart = 0
        }
    }

    private func pumpEvents(_ c: Client, now: UInt64) {
        // A client that does not read gets nothing new queued; the logs move on without it.
        guard c.eventsEnabled, c.pendingOutput < outputLimit else { return }
        let (entries, missed) = vmm.events.lastSeq > c.eventCursor ? vmm.events.events(after: c.eventCursor) : ([], 0)
        c.eventsDropped += missed
        if c.eventsDropped > 0 {
            queue(Event.eventsDropped(count: c.eventsDropped, where: nil).message(wallNs: wall(now)), to: c)
            c.eventsDropped = 0
        }
        for e in entries {
            if encodedEvents[e.seq] == nil { encodedEvents[e.seq] = Self.line(Encode.event(e.event).message(wallNs: wall(e.timeNs))) }
            c.append(encodedEvents[e.seq]!, bound: outputLimit)
        }
        c.eventCursor = entries.last?.seq ?? (c.eventCursor + missed)

        let since = now &- c.lastFaultEvent
        guard since >= options.faultBatchNs, vmm.faults.total > c.faultCursor else { return }
        c.lastFaultEvent = now
        // At most every `faultBatchNs`, the server thread's turn comes a little late most times (it ticks every
        // `tickMs` and shares the CPUs): a fixed batch fell behind a steady 100,000 records a second and the ring
        // overwrote what it had not sent.
        var left = Int(Double(options.maxRecordsPerBatch) * min(4, Double(since) / Double(options.faultBatchNs)))
        while left > 0 && c.pendingOutput < outputLimit {
            let key = FaultBatchKey(after: c.faultCursor, limit: min(left, options.maxRecordsPerEvent))
            if encodedFaults[key] == nil {
                let (records, dropped) = vmm.faults.records(after: key.after, limit: key.limit)
                guard !records.isEmpty || dropped > 0 else { return }
                encodedFaults[key] = (Self.line(Event.memoryFault(FaultBatch(records: records, dropped: dropped)).message(wallNs: wall(now))),
                                      records.last?.seq ?? (key.after + dropped))
            }
            let batch = encodedFaults[key]!
            c.faultCursor = batch.cursor
            left -= max(1, Int(min(UInt64(key.limit), batch.cursor - key.after)))
            c.append(batch.bytes, bound: outputLimit)
        }
    }
}
