import ControlProtocol
import Foundation

/// Records a vmscope VMM's session to a file: the opening `query-snapshot`, then every event, the queries an
/// inspector would make after a change event (memslots, attributes), and the vCPUs every `vcpuIntervalNs`.
/// It is a client of its own, so it runs beside an attached inspector.
// @unchecked: one thread uses it at a time (the TUI hands it to its recording thread and only joins it).
public final class Recorder: @unchecked Sendable {
    public let writer: RecordingWriter
    private let client: ControlClient
    public var vcpuIntervalNs: UInt64 = 1_000_000_000
    private var lastVCPUs: UInt64 = 0
    private var lastClientDrops: UInt64 = 0


    /// Connects, writes the header and the opening snapshot. A stock QEMU is refused (it has no `query-snapshot`
    /// and serves one client per monitor); `ModelRecorder` records it.
    public init(socket: String, path: String, faultLimit: Int = 256, recorder: String = "vmscope") throws {
        // Events as they came (the fast fault decoder would drop each event's timestamp on the way to the file).
        let client = try ControlClient(path: socket, timeoutMs: 5000, decodeFaults: false)
        guard case .vmscope = client.peer else {
            defer { client.close() }
            throw RecordingError.format("\(socket) is \(QEMUPoller.recorderRefusal)")
        }
        self.client = client
        let mono = HostClock.monotonicNs()
        writer = try RecordingWriter(path: path, header: Recording.Header(
            startedAtWallNs: HostClock.wallNs(), startedAtMonotonicNs: mono, socket: socket, greeting: client.greeting,
            recorder: recorder))
        do {
            let snapshot = try Capture.snapshotReply(client, faultLimit: faultLimit)
            try writer.append(.snapshot(snapshot), monotonicNs: HostClock.monotonicNs())
            try writer.flush()
        } catch {
            // No recording without its starting state: leave no half file behind.
            client.close()
            unlink(path)
            throw error
        }
        lastVCPUs = HostClock.monotonicNs()
    }

    /// Records until `shouldStop` says so, the deadline passes or the VMM goes away; finishes the file either
    /// way and returns why it stopped. A write error (disk full) finishes what it can and throws.
    public func run(until deadlineNs: UInt64? = nil, shouldStop: () -> Bool) throws -> String {
        var reason = "stopped", peerGone = false
        do {
            (reason, peerGone) = try loop(until: deadlineNs, shouldStop: shouldStop)
        } catch {
            client.close()
            // The file is good up to the last flush; try to end it properly too (the disk may let the trailer in).
            try? writer.finish(reason: "write error: \(error)", monotonicNs: HostClock.monotonicNs())
            throw error
        }
        client.close()
        try writer.finish(reason: reason, peerGone: peerGone, monotonicNs: HostClock.monotonicNs())
        return reason
    }

    private func loop(until deadlineNs: UInt64?, shouldStop: () -> Bool) throws -> (String, peerGone: Bool) {
        while true {
            if shouldStop() { return ("stopped", false) }
            let now = HostClock.monotonicNs()
            if let deadlineNs, now >= deadlineNs { return ("duration reached", false) }
            var memslotsChanged = false, attributesChanged = false
            var n = 0
            while n < 4096, let item = client.nextItem(timeoutMs: n == 0 ? 50 : 0) {
                let layout = item.event.changesLayout
                memslotsChanged = memslotsChanged || layout.memslots
                attributesChanged = attributesChanged || layout.attributes
                try writer.append(.event(item.message), monotonicNs: HostClock.monotonicNs())
                n += 1
            }
            // Events this client's own queue had to drop: in the file as the server's EVENTS_DROPPED would be.
            let drops = client.eventsDropped
            if drops > lastClientDrops {
                let e = Event.eventsDropped(count: drops - lastClientDrops, where: "recorder")
                try writer.append(.event(e.message()), monotonicNs: HostClock.monotonicNs())
                lastClientDrops = drops
                (memslotsChanged, attributesChanged) = (true, true)
            }
            guard client.isConnected else { return (Recording.peerGoneReason, true) }
            do {
                // What an inspector would ask after such events: its layout queries, the vCPUs once a second.
                if memslotsChanged { try query(QueryMemslots()) }
                if attributesChanged { try query(QueryMemoryAttributes()) }
                let t = HostClock.monotonicNs()
                if t - lastVCPUs >= vcpuIntervalNs {
                    try query(QueryVCPUs())
                    lastVCPUs = t
                }
            } catch let e as ControlClientError {
                if case .command = e { continue }
                return ("\(Recording.peerGoneReason) (\(e))", true)
            }
            try writer.flush()
        }
    }

    /// The reply as it came (the file keeps what the VMM said, not what this version reads of it).
    private func query<C: SchemaCommand>(_ c: C) throws {
        let value = try client.execute(C.name.rawValue, c.arguments, timeoutMs: 10_000)
        try writer.append(.reply(command: C.name.rawValue, value: value), monotonicNs: HostClock.monotonicNs())
    }
}
