import Foundation
import ControlProtocol

/// A control socket that may go away and come back (the VMM restarted, QEMU replaced): connects, picks the source
/// the greeting calls for (vmscope's VMM or a stock QEMU), and reconnects with backoff, saying what the gap cost.
public final class SocketSource: VMSource {
    public let path: String
    private var inner: (any ClientBackedSource)?
    private var vmm: VMMSource? { inner as? VMMSource }
    /// The peer is a stock QEMU's monitor (not vmscope's VMM).
    public var isQEMU: Bool { inner is QEMUMonitorSource }
    /// A peer is connected now.
    public var isConnected: Bool { inner != nil }
    /// The process at the other end, from the socket's peer credentials (`SO_PEERCRED`): never what the peer says.
    public var peerPID: Int? { inner?.client.serverPID }
    private var lastReconnect: UInt64 = 0
    private var reconnectDelayMs: UInt64 = 100
    private var disconnectedAt: UInt64?
    private var notice: (text: String, isError: Bool)?
    private var pendingClient: ControlClient?
    private var facts: (pid: Int?, lastSeq: UInt64?) = (nil, nil)

    /// Starts from a connected client (the first connection's errors belong to the command line).
    public init(path: String, client: ControlClient) {
        self.path = path
        pendingClient = client
    }

    private func connected(_ c: ControlClient, _ model: inout InspectorModel, nowNs: UInt64) {
        let previousPid = model.vm.pid
        let lastSeq = model.visibleFaults.last?.seq
        reconnectDelayMs = 100
        // Perhaps another VM, or the same one restarted: no facts or rates carried over from the old one.
        model.vm = VMInfo()
        model.vcpus = []
        model.previousVCPUs = []
        model.connection = .connected(c.peer.name)
        model.heatMapNote = nil
        model.memslotsStale = true
        model.attributesStale = true
        do {
            switch c.peer {
            case .vmscope:
                model.unavailable = [:]
                let s = VMMSource(client: c)
                inner = s
                try s.start(&model)
            case .qemu:
                let s = QEMUMonitorSource(client: c)
                inner = s
                try s.start(&model, nowNs: nowNs)
            }
        } catch {
            if let e = error as? ControlClientError, case .command(let cls, let d) = e { notice = ("\(cls): \(d)", true) } else {
                lost("\(error)", &model, nowNs: nowNs)
                return
            }
        }
        if let since = disconnectedAt { notice = gapReport(since: since, nowNs: nowNs, previousPid: previousPid, lastSeq: lastSeq, model) }
        disconnectedAt = nil
    }

    /// What the bottom line says after a reconnection: how long the views were blind, and what went by (a stock
    /// QEMU has no fault stream to have missed, but it may be another process).
    private func gapReport(since: UInt64, nowNs: UInt64, previousPid: Int?, lastSeq: UInt64?, _ model: InspectorModel)
        -> (text: String, isError: Bool)
    {
        let seconds = String(format: "%.1f", Double(nowNs &- since) / 1e9)
        let isQEMU = inner is QEMUMonitorSource
        if let previousPid, let pid = model.vm.pid, pid != previousPid {
            let afresh = isQEMU ? "QEMU restarted (pid \(previousPid) → \(pid)); its counters start afresh"
                : "the VMM restarted (pid \(previousPid) → \(pid)); its counters and fault seq start afresh"
            return ("reconnected after \(seconds) s: \(afresh)", true)
        }
        if isQEMU { return ("reconnected after \(seconds) s to the same QEMU (pid \(model.vm.pid.map(String.init) ?? "?"))", false) }
        if let lastSeq, let total = try? vmm?.client.run(QueryMemoryFaults(limit: 0), timeoutMs: 5000).total, total > lastSeq {
            return ("reconnected after \(seconds) s: \(total - lastSeq) fault records went by unseen (seq \(lastSeq + 1)–\(total))", true)
        }
        return ("reconnected after \(seconds) s; no fault records missed", false)
    }

    /// Closes the connection (the source stays usable: its next poll reconnects).
    public func close() {
        inner?.client.close()
        pendingClient?.close()
        pendingClient = nil
    }

    private func lost(_ why: String, _ model: inout InspectorModel, nowNs: UInt64) {
        inner?.client.close()
        inner = nil
        if disconnectedAt == nil { disconnectedAt = nowNs }
        model.connection = .disconnected(why)
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        if let c = pendingClient {
            pendingClient = nil
            connected(c, &model, nowNs: nowNs)
            return true
        }
        guard let inner else {
            guard nowNs &- lastReconnect > reconnectDelayMs * 1_000_000 else { return false }
            lastReconnect = nowNs
            do { connected(try ControlClient(path: path, timeoutMs: 500, decodeFaults: true), &model, nowNs: nowNs) } catch {
                reconnectDelayMs = min(reconnectDelayMs * 2, 2000)
                model.connection = .disconnected("\(error) (next try in \(reconnectDelayMs) ms)")
            }
            return true
        }
        do {
            return try inner.pollThrowing(&model, nowNs: nowNs)
        } catch {
            if let e = error as? ControlClientError, case .command(let c, let d) = e {
                notice = ("\(c): \(d)", true)
                return true
            }
            lost(errorText(error), &model, nowNs: nowNs)
            return true
        }
    }

    private func errorText(_ e: any Error) -> String {
        if let c = e as? ControlClientError, case .connection(let why) = c { return why }
        return "\(e)"
    }

    public func refusal(_ action: InspectorAction) -> String? {
        guard let inner else { return "not connected" }
        return inner.refusal(action)
    }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        guard let inner else { throw SourceRefusal("not connected") }
        do { return try inner.perform(action, model: &model) } catch let e as ControlClientError {
            if case .command = e { throw e }
            lost(errorText(e), &model, nowNs: HostClock.monotonicNs())
            throw e
        }
    }

    public func takeNotice() -> (text: String, isError: Bool)? {
        defer { notice = nil }
        return notice
    }

    public var recordingSocket: Result<String, SourceRefusal> {
        inner?.recordingSocket ?? .failure(SourceRefusal("not connected"))
    }

    public var recordedFromModel: (socket: String, greeting: JSON)? {
        (inner as? QEMUMonitorSource).map { (path, $0.client.greeting) }
    }
}
