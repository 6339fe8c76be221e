/// One inspector session without a terminal: a source feeding the model, the UI state, and keys turned into
/// actions on the source. `vmscope attach`, `vmscope demo` and `vmscope replay` run this same loop; only the source
/// differs. What the driver cannot do itself (write files, start a recorder, quit) comes back to its caller as effects.
public final class InspectorDriver {
    public private(set) var model: InspectorModel
    public var ui: InspectorUI
    public let source: any VMSource
    private var dirty = true
    private var lastPaint: UInt64 = 0
    /// With `background`, the thread the source is polled and acted on (`SourceWorker`); nil: this thread.
    private let worker: SourceWorker?
    private var workerGeneration: UInt64 = 0

    /// `background`: poll and act on the source on a thread of its own, so that `tick` and `handle` never wait on
    /// it (a live VM's source: socket round trips, tracepoint reads). Without it (replay, tests) they happen in
    /// `tick` and `handle`, in order.
    public init(source: any VMSource, ui: InspectorUI, model: InspectorModel = InspectorModel(), background: Bool = false) {
        self.source = source
        self.ui = ui
        self.model = model
        worker = background ? SourceWorker(source: source, model: model) : nil
    }

    /// Stops the background worker (at most `timeoutNs`); the source is this thread's again after it.
    public func stop(timeoutNs: UInt64 = 500_000_000) {
        worker?.stop(timeoutNs: timeoutNs)
    }

    /// One pass: the source polled (or, in the background, its newest state taken), the UI fitted to a
    /// `width`×`height` frame. Returns whether a frame is due.
    public func tick(nowNs: UInt64, width: Int, height: Int) -> Bool {
        if let worker {
            let taken = worker.take(after: workerGeneration)
            workerGeneration = taken.generation
            if let m = taken.model { model = m; dirty = true }
            for n in taken.notices { notify(n) }
            for r in taken.results { apply(r); dirty = true }
        } else {
            if source.poll(&model, nowNs: nowNs) { dirty = true }
            if let n = source.takeNotice() { notify(n) }
        }
        ui.replay = source.timeline
        ui.fit(model, width: width, height: height)
        // Fading fault marks need repaints while they fade; the REC clock once a second.
        if !model.recentFaults.isEmpty && nowNs &- lastPaint > 100_000_000 && ui.replay?.paused != true { dirty = true }
        if ui.recording != nil && nowNs &- lastPaint > 1_000_000_000 { dirty = true }
        return dirty
    }

    /// The frame, drawn at the source's time.
    public func frame(_ renderer: inout Renderer, width: Int, height: Int, nowNs: UInt64) -> Screen {
        renderer.nowNs = source.viewTimeNs(nowNs: nowNs)
        dirty = false
        lastPaint = nowNs
        return renderer.render(model, ui, width: width, height: height)
    }

    /// A source's own message on the status line; a note does not cover an error already there (a bad theme).
    private func notify(_ n: (text: String, isError: Bool)) {
        guard n.isError || ui.status?.isError != true else { return }
        // A note does not cover one shown until a key (the demo's socket path, which a bare machine's "no kernel
        // cross-check" replaced before anyone read it): it waits its turn.
        if !n.isError && ui.noteUntilKey && ui.status != nil {
            if ui.laterNotes.count < InspectorUI.laterNotesLimit && !ui.laterNotes.contains(n.text) { ui.laterNotes.append(n.text) }
            return
        }
        ui.status = n
        dirty = true
    }

    /// Marks the next frame due (after the caller changed the UI state).
    public func invalidate() { dirty = true }

    /// A key: the UI's response, its actions done through the source. Returns the effects left to the caller
    /// (`snapshot`, `toggleRecording`, `quit`).
    public func handle(_ key: Key, nowNs: UInt64) -> [Effect] {
        dirty = true
        var rest: [Effect] = []
        for effect in ui.handle(key) {
            switch effect {
            case .act(let action): act(action)
            case .readMemslot(let row):
                guard let slot = Renderer.memslot(atRow: row, model, ui.memslotSort) else { continue }
                ui.overlay = .hexDump(gpa: slot.gpa, bytes: nil)
                ui.hexScroll = 0
                act(.readMemory(gpa: slot.gpa, size: 4096))
            case .replay(let c):
                if let why = source.control(c, nowNs: nowNs) { ui.status = (why, true) }
            case .snapshot, .toggleRecording, .quit:
                rest.append(effect)
            }
        }
        return rest
    }

    /// Does `action` through the source, or says why not; the status line tells how it went. In the background the
    /// action is queued, the status line says so, and its result arrives with a later `tick`.
    public func act(_ action: InspectorAction) {
        if let worker {
            worker.submit(action)
            ui.status = ("\(action.description): …", false)
            return
        }
        apply(ActionResult.perform(action, on: source, model: &model))
    }

    private func apply(_ r: ActionResult) {
        if let (gpa, bytes) = r.bytes {
            // In the background only while the dump that asked is still open (a key may have closed it meanwhile).
            if case .hexDump(let g, nil)? = ui.overlay, g == gpa { ui.overlay = .hexDump(gpa: gpa, bytes: bytes) }
            else if worker == nil { ui.overlay = .hexDump(gpa: gpa, bytes: bytes) }
            return
        }
        if r.closeOverlay, case .hexDump? = ui.overlay { ui.overlay = nil }
        ui.status = r.status
    }
}
