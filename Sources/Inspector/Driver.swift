/// One inspector session without a terminal: a source feeding the model, the UI state, and keys turned into
/// actions on the source. `vmscope attach`, `vmscope demo` and `vmscope replay` run this same loop; only the source
/// differs. What the driver cannot do itself (write files, start a recorder, quit) comes back to its caller as effects.
public final class InspectorDriver {
    public private(set) var model: InspectorModel
    public var ui: InspectorUI
    public let source: any VMSource
    private var dirty = true
    private var lastPaint: UInt64 = 0

    public init(source: any VMSource, ui: InspectorUI, model: InspectorModel = InspectorModel()) {
        self.source = source
        self.ui = ui
        self.model = model
    }

    /// One pass: the source polled, the UI fitted to a `width`×`height` frame. Returns whether a frame is due.
    public func tick(nowNs: UInt64, width: Int, height: Int) -> Bool {
        if source.poll(&model, nowNs: nowNs) { dirty = true }
        if let n = source.takeNotice() { ui.status = n; dirty = true }
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
                act(.readMemory(gpa: slot.gpa, size: 4096))
            case .replay(let c):
                if let why = source.control(c, nowNs: nowNs) { ui.status = (why, true) }
            case .snapshot, .toggleRecording, .quit:
                rest.append(effect)
            }
        }
        return rest
    }

    /// Does `action` through the source, or says why not; the status line tells how it went.
    public func act(_ action: InspectorAction) {
        let reading: UInt64? = if case .readMemory(let gpa, _) = action { gpa } else { nil }
        if let why = source.refusal(action) {
            if reading != nil { ui.overlay = nil }
            ui.status = reading != nil ? (why, true) : ("\(action.description): refused: \(why)", true)
            return
        }
        do {
            switch try source.perform(action, model: &model) {
            case .bytes(let b): ui.overlay = .hexDump(gpa: reading ?? 0, bytes: b)
            case .done(let detail, let description): ui.status = ("\(description ?? action.description): done\(detail)", false)
            }
        } catch {
            if reading != nil { ui.overlay = nil }
            ui.status = ("\(action.description): \(error)", true)
        }
    }
}
