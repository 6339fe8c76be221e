import Foundation
import ControlProtocol

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
