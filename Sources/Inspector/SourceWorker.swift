import ControlProtocol
import Foundation
import Schema
import Synchronization

/// What an action came to, for the UI to show: the status line, and the hex dump's bytes or its closing.
struct ActionResult: Sendable {
    var status: (text: String, isError: Bool)
    /// The hex dump's bytes (`readMemory` done), or nil; `closeOverlay`: the read failed or was refused.
    var bytes: (gpa: UInt64, bytes: [UInt8])?
    var closeOverlay = false

    /// Does `action` through `source` (refusal first), as both the synchronous and the background driver do.
    static func perform(_ action: InspectorAction, on source: any VMSource, model: inout InspectorModel) -> ActionResult {
        let reading: UInt64? = if case .readMemory(let gpa, _) = action { gpa } else { nil }
        if let why = source.refusal(action) {
            return ActionResult(status: reading != nil ? (why, true) : ("\(action.description): refused: \(why)", true),
                                closeOverlay: reading != nil)
        }
        do {
            switch try source.perform(action, model: &model) {
            case .bytes(let b):
                return ActionResult(status: ("read \(b.count) bytes at \(Fmt.hex(reading ?? 0))", false), bytes: (reading ?? 0, b))
            case .done(let detail, let description):
                // A conversion's story line starts: what followed, as the records come.
                if case .convert(let gpa, let size, let to) = action { model.story = Story(gpa: gpa, size: size, to: to) }
                return ActionResult(status: ("\(description ?? action.description): done\(detail)", false))
            }
        } catch {
            return ActionResult(status: ("\(action.description): \(error)", true), closeOverlay: reading != nil)
        }
    }
}

/// A live source driven on a thread of its own: its polls (socket events, tracepoint reads, corroboration) and
/// every action's refusal check and round trip run there, and the UI thread only takes the finished model and the
/// actions' results. So the UI never waits on a socket nor does work proportional to the stream: a key is answered
/// at once, and `q` ends the session whatever the source is doing.
final class SourceWorker: @unchecked Sendable {
    // @unchecked: `source` and `model` are touched by the worker's thread only (after init); everything the UI
    // thread reads crosses through `shared`.
    private struct Shared {
        var model: InspectorModel
        var generation: UInt64 = 0
        var notices: [(text: String, isError: Bool)] = []
        var results: [ActionResult] = []
        var requests: [InspectorAction] = []
        var stopping = false
    }

    private let source: any VMSource
    private var model: InspectorModel
    private let shared: Mutex<Shared>
    private let wake = DispatchSemaphore(value: 0)
    private let done = DispatchSemaphore(value: 0)
    /// The longest the worker sleeps between polls.
    static let pollIntervalNs: UInt64 = 20_000_000

    init(source: any VMSource, model: InspectorModel) {
        self.source = source
        self.model = model
        shared = Mutex(Shared(model: model))
        let thread = Thread { [self] in
            nameCurrentThread("vmscope/source")
            run()
        }
        thread.start()
    }

    private func run() {
        while true {
            let requests = shared.withLock { s -> [InspectorAction]? in
                if s.stopping { return nil }
                defer { s.requests = [] }
                return s.requests
            }
            guard let requests else { break }
            let results = requests.map { ActionResult.perform($0, on: source, model: &model) }
            let changed = source.poll(&model, nowNs: HostClock.monotonicNs())
            let notice = source.takeNotice()
            if changed || !results.isEmpty || notice != nil {
                shared.withLock { s in
                    s.model = model
                    s.generation &+= 1
                    if let notice { s.notices.append(notice) }
                    s.results += results
                }
            }
            _ = wake.wait(timeout: .now() + .nanoseconds(Int(Self.pollIntervalNs)))
        }
        done.signal()
    }

    /// The model as of the worker's last change, if newer than `generation`, with what happened since.
    func take(after generation: UInt64) -> (model: InspectorModel?, generation: UInt64, notices: [(text: String, isError: Bool)], results: [ActionResult]) {
        shared.withLock { s in
            defer { s.notices = []; s.results = [] }
            return (s.generation != generation ? s.model : nil, s.generation, s.notices, s.results)
        }
    }

    /// Queues `action` for the worker (which wakes at once).
    func submit(_ action: InspectorAction) {
        shared.withLock { $0.requests.append(action) }
        wake.signal()
    }

    /// Asks the worker to stop and waits at most `timeoutNs` for it (a round trip in flight may outlast that: the
    /// session then ends anyway, and the process's exit closes the source).
    @discardableResult
    func stop(timeoutNs: UInt64 = 500_000_000) -> Bool {
        shared.withLock { $0.stopping = true }
        wake.signal()
        return done.wait(timeout: .now() + .nanoseconds(Int(timeoutNs))) == .success
    }
}
