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
