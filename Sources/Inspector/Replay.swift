import ControlProtocol

/// A recording played back into a model: `seek(to:)` any time in it, forwards or back. What the views show at
/// time T is what a live inspector would have shown then, given the same events and query replies.
public struct Replay: Sendable {
    public let recording: Recording
    public let file: String
    public private(set) var model = InspectorModel()
    /// The playback position, in ns since the recording started.
    public private(set) var positionNs: UInt64 = 0
    /// Entries applied so far.
    public private(set) var applied = 0
    /// The newest fault seq the model holds: a record at or below it arrived twice (in the opening snapshot and
    /// in an event the server had already queued) and is applied once.
    private var lastSeq: UInt64 = 0
    private var lastVCPUReplyNs: UInt64 = 0
    /// Start times of fault bursts (a fault event after more than `burstGapNs` without one), for `{` and `}`.
    public let burstsNs: [UInt64]
    public static let burstGapNs: UInt64 = 1_000_000_000

    public init(_ recording: Recording, file: String) {
        self.recording = recording
        self.file = file
        var bursts: [UInt64] = []
        var lastFault: UInt64?
        for (t, e) in recording.entries {
            guard case .event(let j) = e, case .memoryFault(let batch)? = Event(message: j), !batch.records.isEmpty else { continue }
            if lastFault.map({ t - $0 > Self.burstGapNs }) ?? true { bursts.append(t) }
            lastFault = t
        }
        burstsNs = bursts
        reset()
    }

    public var durationNs: UInt64 { recording.durationNs }
    public var atEnd: Bool { applied == recording.entries.count }

    private mutating func reset() {
        model = InspectorModel()
        model.connection = .connected((ControlPeer(greeting: recording.header.greeting)?.name ?? "?") + ", recorded")
        positionNs = 0
        applied = 0
        lastSeq = 0
        lastVCPUReplyNs = 0
    }

    /// The model as of `t` (clamped to the recording): entries up to and including `t` applied.
    public mutating func seek(to t: UInt64) {
        let target = min(t, durationNs)
        if target < positionNs { reset() }
        while applied < recording.entries.count && recording.entries[applied].t <= target {
            apply(recording.entries[applied])
            applied += 1
        }
        positionNs = target
    }

    /// The monotonic time the recorder saw at `t` (fault marks fade against it).
    public func monotonicNs(at t: UInt64) -> UInt64 { recording.header.startedAtMonotonicNs.saturatingAdd(t) }
    /// The wall-clock time `t` into the recording (saturating: a file's header may say anything).
    public func wallNs(at t: UInt64) -> UInt64 { recording.header.startedAtWallNs.saturatingAdd(t) }

    private mutating func apply(_ item: (t: UInt64, entry: Recording.Entry)) {
        let now = monotonicNs(at: item.t)
        switch item.entry {
        case .snapshot(let j):
            model.apply(snapshot: StateSnapshot(json: j))
            lastSeq = max(lastSeq, model.visibleFaults.last?.seq ?? 0)
        case .event(let e):
            guard let event = Event(message: e) else { return }
            if case .memoryFault(var batch) = event {
                batch.records.removeAll { $0.seq <= lastSeq }
                lastSeq = max(lastSeq, batch.records.last?.seq ?? 0)
                model.apply(faults: batch, nowNs: now)
            } else {
                model.apply(event: event, nowNs: now)
            }
        case .reply(let command, let value):
            switch CommandName(rawValue: command) {
            case .queryVM?: model.apply(vm: QueryVM.reply(value))
            case .queryMemslots?: model.apply(memslots: QueryMemslots.reply(value))
            case .queryMemoryAttributes?: model.apply(attributes: QueryMemoryAttributes.reply(value))
            case .queryVCPUs?:
                model.apply(vcpus: QueryVCPUs.reply(value), intervalNs: lastVCPUReplyNs == 0 ? 1 : item.t - lastVCPUReplyNs)
                lastVCPUReplyNs = item.t
            default: break
            }
        case .view(let j):
            model.apply(view: j, intervalNs: lastVCPUReplyNs == 0 ? 1 : item.t - lastVCPUReplyNs)
            lastVCPUReplyNs = item.t
        case .end(let reason, let peerGone):
            // The recording ends where the live connection did.
            if peerGone { model.connection = .disconnected(reason) }
        }
    }

    /// The start of the previous/next fault burst from the position, if any.
    public func burst(before t: UInt64) -> UInt64? { burstsNs.last { $0 < t } }
    public func burst(after t: UInt64) -> UInt64? { burstsNs.first { $0 > t } }
}
