import ControlProtocol

/// The inspector's UI state: focus, cursors, zoom, selection, dialogs. `handle(_:)` turns keys into changes
/// and effects; nothing here touches a terminal or a socket.
public struct InspectorUI: Sendable {
    public var focus: Pane = .map
    public var maximized = false
    /// Map cursor (a GFN) and zoom (pages per cell; nil = fit all of RAM).
    public var cursorGFN: UInt64 = 0
    public var pagesPerCell: UInt64?
    public var firstCell: UInt64 = 0
    /// A range selection start on the map (GFN), while `v` is active, and the finished selection.
    public var selectionAnchor: UInt64?
    public var selection: ClosedRange<UInt64>?
    public var faultCursor = 0          // 0 = newest
    /// The record the cursor is on, once it left the newest: new faults arriving keep it selected (as htop follows
    /// a process), instead of the cursor's offset landing on another record (#99 → #127 → #158).
    public var pinnedFaultSeq: UInt64?
    /// The cursor when the pin was last set: a cursor moved since (a key, a caller) takes a new pin.
    private var pinnedAtCursor: Int?
    public var frozen = false
    public var frozenAtSeq: UInt64?
    /// The faults pane's lower panel shows the traced conversion-latency histogram instead of the selected fault.
    public var showLatency = false
    public var faultFilter = FaultFilter() { didSet { faultCursorChecked = nil } }
    /// The fault cursor as `fit` last found it within the list.
    private var faultCursorChecked: Int?
    public var memslotCursor = 0
    public var memslotSort = MemslotSort.slot
    public var vcpuCursor = 0
    public var overlay: Overlay?
    /// The help's first line shown (it scrolls: a small terminal holds only part of it).
    public var helpScroll = 0
    /// The hex dump's first row shown (16 bytes a row; the page's 256 rows scroll).
    public var hexScroll = 0
    /// The status line holds a note until the first key, then the key hints again.
    public var noteUntilKey = false
    /// Notes that came while one was up (the tracer's reason beside the demo's socket path), each shown in turn at
    /// the next key; at most `laterNotesLimit`.
    public var laterNotes: [String] = []
    static let laterNotesLimit = 4
    /// A guided tour's words for the step it is at (`demo --story`), above the story line.
    public var narration: String?
    /// The frame's size as `fit` last saw it (the help's terms wrap to its width; dialogs scroll within its height).
    var screenWidth = 80
    var screenHeight = 24
    /// A line being typed after `:` or `/`.
    public var prompt: (kind: Character, text: String)?
    /// What was entered at each prompt (`:` and `/`), oldest first, and where Up/Down stand in it.
    public var promptHistory: [Character: [String]] = [:]
    var historyIndex: Int?
    public var status: (text: String, isError: Bool)?
    public var readOnly = false
    /// `--allow-control`: stop, resume and inject into a VM vmscope did not start without asking each time.
    public var allowControl = false
    /// The VM in view when vmscope did not start it (a stock QEMU): its name and pid, for the question its
    /// controls ask first. nil for vmscope's own VMM (its `--allow-mutations` is the consent).
    public var foreignVM: String?
    public var ascii = false
    public var themeNames: [String] = ["default"]
    public var themeIndex = 0
    /// Set by the controller each frame: the map's grid size and RAM, for cursor movement.
    public var mapColumns = 64
    public var mapRows = 16
    public var totalPages: UInt64 = 1
    public var vcpuCount = 0
    public var memslotCount = 0
    /// Run state of each vCPU, as last reported (`P` pauses a running one and resumes a stopped one).
    public var vcpuStates: [Open<VCPURunState>] = []
    /// Set while the views show a recording (`vmscope replay`): its timeline keys work, mutations do not.
    public var replay: ReplayStatus?
    /// Set while `R` records the session.
    public var recording: RecordingStatus?

    public init() {}

    /// A session's starting state: its themes (the first is in use), ASCII or not, read-only or not.
    public init(themeNames: [String], ascii: Bool, readOnly: Bool) {
        self.themeNames = themeNames
        self.ascii = ascii
        self.readOnly = readOnly
    }

    public var themeName: String { themeNames[themeIndex % max(1, themeNames.count)] }

    /// Tells the UI state what a `width`×`height` frame over `model` shows: the map's grid (so cursor moves and
    /// zoom use what is on screen), RAM, the vCPUs; and pins a frozen fault stream to its newest record.
    public mutating func fit(_ model: InspectorModel, width: Int, height: Int) {
        screenWidth = width
        screenHeight = height
        if let r = Renderer.layout(width: width, height: height, ui: self, storyRows: Renderer.footerLines(model, self, width: width).count)[.map] {
            let g = Renderer.mapGrid(r, noteLines: Renderer.heatNote(model, width: r.inner.width).count)
            mapColumns = g.columns
            mapRows = g.rows
        }
        totalPages = model.mapPages
        vcpuCount = model.vcpus.count
        vcpuStates = model.vcpus.map(\.state)
        injectionKinds = model.offeredInjections
        foreignVM = model.vm.qemuVersion.map { v in
            "\(terminalSafe(model.vm.name))\(model.vm.pid.map { " (pid \($0))" } ?? ""), a \(v) vmscope did not start"
        }
        memslotCount = model.memslots.count
        if frozen && frozenAtSeq == nil { frozenAtSeq = model.visibleFaults.last?.seq ?? 0 }
        // A pinned record: the cursor goes where it now is (the records newer than it), or, once it has left the
        // buffer, stays where it was and is pinned to what is there now. A cursor moved since (a key, a caller)
        // takes a new pin.
        if pinnedAtCursor != faultCursor { pinnedFaultSeq = nil }
        if faultCursor > 0, let pinned = pinnedFaultSeq {
            var newer = 0, found = false
            for f in shownFaults(model) {
                if f.seq == pinned { found = true; break }
                if f.seq < pinned { break }
                newer += 1
            }
            if found { faultCursor = newer; faultCursorChecked = newer; pinnedAtCursor = newer; return } else { pinnedFaultSeq = nil }
        }
        // Keep the fault cursor on a fault the list shows (g puts it past the oldest, from where j and k would
        // not move it), and pin the record it is on. It counts back from the newest, so only that many are looked
        // at, and only when it moved or lost its pin: arriving faults never make a checked cursor point past the list.
        if faultCursor > 0 && (faultCursor != faultCursorChecked || pinnedFaultSeq == nil) {
            var shown = 0
            var at: UInt64?
            for f in shownFaults(model) {
                at = f.seq
                shown += 1
                if shown > faultCursor { break }
            }
            faultCursor = min(faultCursor, max(0, shown - 1))
            faultCursorChecked = faultCursor
            pinnedFaultSeq = faultCursor > 0 ? at : nil
        }
        pinnedAtCursor = faultCursor
    }

    /// The faults the list shows, newest first: up to the freeze, through the filter.
    func shownFaults(_ model: InspectorModel) -> some Sequence<FaultRecord> {
        let limitSeq = frozen ? (frozenAtSeq ?? model.visibleFaults.last?.seq ?? 0) : .max
        let filter = faultFilter
        return model.visibleFaults.reversed().lazy.filter { $0.seq <= limitSeq && filter.matches($0) }
    }

    public var effectivePagesPerCell: UInt64 {
        pagesPerCell ?? MapGeometry.fitting(totalPages: totalPages, columns: mapColumns, rows: mapRows)
    }


    /// What the injection menu offers: the source's kinds (`InspectorModel.offeredInjections`, taken by `fit`).
    public var injectionKinds: [InjectionKind] = InjectionKind.allCases
}

public enum MemslotSort: String, Sendable {
    case slot, gpa, size
    var next: MemslotSort { switch self { case .slot: .gpa; case .gpa: .size; case .size: .slot } }
}
