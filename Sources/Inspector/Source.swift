import Foundation
import ControlProtocol

/// What an action came to.
public enum ActionOutcome: Sendable, Equatable {
    /// Done; `detail` is what the status line adds ("in 312 µs", the injection's detail); `description` names what
    /// was done instead of the action when the source did something of its own for it (QEMU's `stop` for a pause).
    case done(detail: String, description: String? = nil)
    /// Memory read (`readMemory`).
    case bytes([UInt8])
}

/// Where the inspector's views come from: a vmscope VMM, a stock QEMU, a recording, ... The session drives one
/// through this protocol and nothing else, so a new source (host tracing) touches no view and no key.
public protocol VMSource: AnyObject {
    /// Brings `model` up to date (events, due queries) as of `nowNs`; returns whether it changed. A source that
    /// lost its peer says so in `model.connection`, and keeps trying if it can.
    func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool
    /// nil when this source can do `action`; else the reason it cannot, which the status line shows.
    func refusal(_ action: InspectorAction) -> String?
    /// Does `action` (one `refusal` allowed); a refusal by the peer or a broken connection throws, with the reason.
    func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome
    /// A message for the status line that the source produced on its own (a reconnection's report), once.
    func takeNotice() -> (text: String, isError: Bool)?
    /// Moves a recording's timeline; nil when done, else why not.
    func control(_ c: ReplayControl, nowNs: UInt64) -> String?
    /// The timeline, for sources that have one.
    var timeline: ReplayStatus? { get }
    /// What a snapshot of the views says it came from.
    var origin: Snapshot.Origin { get }
    /// The control socket a `vmscope record` of this source would connect to, or why there is none.
    var recordingSocket: Result<String, SourceRefusal> { get }
    /// A peer recorded from the inspector's own model instead (`ModelRecorder`: a stock QEMU): its socket and
    /// greeting; nil for the others.
    var recordedFromModel: (socket: String, greeting: JSON)? { get }
    /// The monotonic time the views are drawn at (fading fault marks): now, or a recording's clock.
    func viewTimeNs(nowNs: UInt64) -> UInt64
}

/// A source that talks to its peer through one control connection (vmscope's VMM, QEMU's monitor): what the
/// reconnecting `SocketSource` needs of whichever it holds.
protocol ClientBackedSource: VMSource {
    var client: ControlClient { get }
    /// `poll`, with a broken connection thrown (the reconnecting source above it handles it).
    func pollThrowing(_ model: inout InspectorModel, nowNs: UInt64) throws -> Bool
}

/// A reason a source cannot do something.
public struct SourceRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

extension VMSource {
    public func takeNotice() -> (text: String, isError: Bool)? { nil }
    public func control(_ c: ReplayControl, nowNs: UInt64) -> String? { "that key moves a replay's timeline (vmscope replay FILE)" }
    public var timeline: ReplayStatus? { nil }
    public var origin: Snapshot.Origin { .live }
    public var recordingSocket: Result<String, SourceRefusal> { .failure(SourceRefusal("this source has no control socket to record")) }
    public var recordedFromModel: (socket: String, greeting: JSON)? { nil }
    public func viewTimeNs(nowNs: UInt64) -> UInt64 { nowNs }
}

// MARK: vmscope's VMM

/// A vmscope VMM over its control socket: events as they come, memslots and attributes re-read when an event says
/// they changed, the vCPUs every `vcpuIntervalNs`. Every action is one typed command; the VMM itself refuses what
/// it was not started to allow, with its reason.
public final class VMMSource: ClientBackedSource {
    public let client: ControlClient
    public var vcpuIntervalNs: UInt64 = 100_000_000
    public var timeoutMs: Int32 = 5000
    private var lastVCPUQuery: UInt64 = 0
    private var lastPaintHint: UInt64 = 0

    public init(client: ControlClient) { self.client = client }

    /// The VM's facts (`query-vm`), once after connecting.
    public func start(_ model: inout InspectorModel) throws(ControlClientError) {
        model.apply(vm: try client.run(QueryVM(), timeoutMs: timeoutMs))
        model.memslotsStale = true
        model.attributesStale = true
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        (try? pollThrowing(&model, nowNs: nowNs)) ?? true
    }

    /// `poll`, with a broken connection thrown (the reconnecting source above it handles it).
    func pollThrowing(_ model: inout InspectorModel, nowNs: UInt64) throws(ControlClientError) -> Bool {
        var changed = false
        var n = 0
        while n < 10_000, let e = client.nextItem(timeoutMs: 0) {
            model.apply(event: e.event, nowNs: nowNs)
            n += 1
        }
        if n > 0 { changed = true }
        if !client.isConnected { throw .connection("the VMM went away") }
        if model.memslotsStale, let r = try query(QueryMemslots()) { model.apply(memslots: r); changed = true }
        if model.attributesStale, let r = try query(QueryMemoryAttributes()) { model.apply(attributes: r); changed = true }
        if nowNs &- lastVCPUQuery > vcpuIntervalNs, let r = try query(QueryVCPUs()) {
            let previous = model.vcpus
            model.apply(vcpus: r, intervalNs: lastVCPUQuery == 0 ? 1 : nowNs &- lastVCPUQuery)
            lastVCPUQuery = nowNs
            // Rates on screen move once a second even when nothing else does.
            if model.vcpus != previous || nowNs &- lastPaintHint > 900_000_000 { changed = true; lastPaintHint = nowNs }
        }
        return changed
    }

    /// A query's reply; nil when the VMM refused it (the views keep what they had), thrown when the connection broke.
    private func query<C: SchemaCommand>(_ c: C) throws(ControlClientError) -> C.Reply? {
        do { return try client.run(c, timeoutMs: timeoutMs) } catch {
            if case .command = error { return nil }
            throw error
        }
    }

    public func refusal(_ action: InspectorAction) -> String? { nil }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        let outcome: ActionOutcome
        switch action {
        case .convert(let gpa, let size, let to):
            let r = try client.run(SetMemoryAttributes(gpa: gpa, size: size, toPrivate: to == .private), timeoutMs: 10_000)
            outcome = .done(detail: " in \(r.durationNs / 1000) µs")
        case .inject(let kind, let vcpu, let gpa, let size):
            // Each kind takes what it needs: a vCPU (nmi), a vCPU and an address (mce), or a range.
            let command = switch kind {
            case .nmi: InjectFault(kind: kind, vcpu: vcpu)
            case .mce: InjectFault(kind: kind, vcpu: vcpu, gpa: gpa)
            case .discard, .revoke, .flip: InjectFault(kind: kind, gpa: gpa, size: size)
            }
            outcome = .done(detail: ": " + (try client.run(command, timeoutMs: 10_000)).detail)
        case .vcpu(let index, let a):
            try client.run(VCPUControl(index: index, action: a), timeoutMs: 10_000)
            outcome = .done(detail: "")
        case .setPolicy(let p):
            try client.run(SetFaultPolicy(policy: p), timeoutMs: 10_000)
            // The status bar says the policy in force from now on (query-vm is read once, at attach).
            model.vm.policy = p.rawValue
            outcome = .done(detail: "")
        case .readMemory(let gpa, let size):
            return .bytes(try client.run(ReadMemory(gpa: gpa, size: size, view: .auto), timeoutMs: 10_000).bytes)
        }
        model.attributesStale = true
        model.memslotsStale = true
        lastVCPUQuery = 0
        return outcome
    }

    public var recordingSocket: Result<String, SourceRefusal> { .success(client.path) }
}

// MARK: A stock QEMU

/// A stock QEMU's QMP monitor: `QEMUSource` polls it; actions map onto QEMU's own commands where it has one.
public final class QEMUMonitorSource: ClientBackedSource {
    public let client: ControlClient
    public var qemu: QEMUSource
    public var timeoutMs: Int32 = 5000

    public init(client: ControlClient) {
        self.client = client
        qemu = QEMUSource(greeting: client.greeting)
    }

    var execute: QEMUSource.Execute {
        let c = client, t = timeoutMs
        return { name, args in try c.execute(name, args, timeoutMs: t) }
    }

    public func start(_ model: inout InspectorModel, nowNs: UInt64) throws {
        try qemu.start(execute, model: &model, nowNs: nowNs, pid: client.serverPID)
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        (try? pollThrowing(&model, nowNs: nowNs)) ?? true
    }

    func pollThrowing(_ model: inout InspectorModel, nowNs: UInt64) throws -> Bool {
        var n = 0
        while n < 10_000, let e = client.nextItem(timeoutMs: 0) {
            let event = e.event
            model.apply(event: event, nowNs: nowNs)
            qemu.apply(event: event, model: &model)
            n += 1
        }
        if !client.isConnected { throw ControlClientError.connection("QEMU went away") }
        return try qemu.poll(execute, model: &model, nowNs: nowNs) || n > 0
    }

    public func refusal(_ action: InspectorAction) -> String? {
        if case .refuse(let why) = qemu.translate(action) { return why }
        return nil
    }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        switch qemu.translate(action) {
        case .refuse(let why): throw SourceRefusal(why)
        case .readMemory(let gpa, let size): return .bytes(try qemu.readMemory(execute, gpa: gpa, size: size))
        case .run(let name, let arguments, let description):
            try client.execute(name, arguments, timeoutMs: 10_000)
            qemu.refreshSoon()
            return .done(detail: "", description: description)
        }
    }

    public var recordingSocket: Result<String, SourceRefusal> {
        .failure(SourceRefusal("this is \(QEMUSource.recorderRefusal)"))
    }
}

// MARK: Reconnection

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

// MARK: A recording

/// A recording played back on its own clock: the same views and keys as live, the timeline keys move it, and
/// every action is refused (a recording holds no VM to act on, and no guest memory).
public final class RecordingSource: VMSource {
    public private(set) var replay: Replay
    public let speed: Double
    /// Playback: position `anchorNs` at monotonic time `anchorAt`; paused keeps the position.
    private var paused = false
    private var anchorNs: UInt64 = 0
    private var anchorAt: UInt64
    private var appliedSeen = -1

    public init(replay: Replay, speed: Double, nowNs: UInt64) {
        self.replay = replay
        self.speed = speed
        anchorAt = nowNs
    }

    private func position(nowNs: UInt64) -> UInt64 {
        // Saturating: a recording may hold times near 2^64 (a hostile or damaged file), and a wrapped position
        // would replay from its start.
        paused ? anchorNs : anchorNs.saturatingAdd(UInt64(saturating: Double(nowNs.saturatingSubtract(anchorAt)) * speed))
    }

    private func jump(to t: UInt64, nowNs: UInt64) {
        anchorNs = min(t, replay.durationNs)
        anchorAt = nowNs
        replay.seek(to: anchorNs)
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        var at = position(nowNs: nowNs)
        var changed = false
        if at >= replay.durationNs && !paused {
            at = replay.durationNs
            anchorNs = at
            paused = true
            changed = true
        }
        let before = replay.positionNs
        replay.seek(to: at)
        if replay.applied != appliedSeen || appliedSeen < 0 {
            appliedSeen = replay.applied
            changed = true
        }
        model = replay.model
        // Playing, the clock moves every frame; paused, only a key changes anything.
        return changed || (!paused && replay.positionNs != before)
    }

    public func refusal(_ action: InspectorAction) -> String? {
        if case .readMemory = action { return "a recording holds no guest memory" }
        return "this is a replay"
    }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        throw SourceRefusal(refusal(action) ?? "")
    }

    public func control(_ c: ReplayControl, nowNs: UInt64) -> String? {
        let at = position(nowNs: nowNs)
        switch c {
        case .togglePause:
            anchorNs = min(at, replay.durationNs)
            anchorAt = nowNs
            paused.toggle()
        case .skip(let s):
            let step = UInt64(s.magnitude).multipliedReportingOverflow(by: 1_000_000_000)
            let ns = step.overflow ? UInt64.max : step.partialValue
            jump(to: s < 0 ? at.saturatingSubtract(ns) : at.saturatingAdd(ns), nowNs: nowNs)
        case .previousBurst:
            // Within a second of a burst's start, `{` goes to the one before it.
            guard let b = replay.burst(before: at > 1_000_000_000 ? at - 1_000_000_000 : 0) ?? replay.burst(before: at) else {
                return "no fault burst before \(Fmt.duration(at))"
            }
            jump(to: b, nowNs: nowNs)
        case .nextBurst:
            guard let b = replay.burst(after: at) else { return "no fault burst after \(Fmt.duration(at))" }
            jump(to: b, nowNs: nowNs)
        }
        appliedSeen = -1
        return nil
    }

    public var timeline: ReplayStatus? {
        ReplayStatus(positionNs: replay.positionNs, durationNs: replay.durationNs, speed: speed, paused: paused)
    }

    public var origin: Snapshot.Origin { .recording(file: replay.file, offsetNs: replay.positionNs) }

    public var recordingSocket: Result<String, SourceRefusal> { .failure(SourceRefusal("this is a replay; it is a recording already")) }

    public func viewTimeNs(nowNs: UInt64) -> UInt64 { replay.monotonicNs(at: replay.positionNs) }
}
