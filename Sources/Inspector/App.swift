import ControlProtocol

/// The four views.
public enum Pane: Int, Sendable, CaseIterable {
    case map = 0, faults, memslots, vcpus
    public var title: String {
        switch self {
        case .map: "1 GFN map"
        case .faults: "2 Faults"
        case .memslots: "3 Memslots"
        case .vcpus: "4 vCPUs"
        }
    }
}

/// A key as the input handler sees it.
public enum Key: Sendable, Equatable, Hashable {
    case char(Character)
    case up, down, left, right, pageUp, pageDown, home, end, tab, backTab, enter, escape, backspace, resize
}

/// Something the user asked the VM's source to do: typed, whatever the source (vmscope's VMM, QEMU, a recording)
/// makes of it. The source says whether it can (`VMSource.refusal`).
public enum InspectorAction: Sendable, Equatable {
    case convert(gpa: UInt64, size: UInt64, to: PageAttribute)
    case inject(InjectionKind, vcpu: Int, gpa: UInt64, size: UInt64)
    case vcpu(index: Int, VCPUAction)
    case setPolicy(FaultPolicy)
    case readMemory(gpa: UInt64, size: UInt64)

    /// What the status line calls it.
    public var description: String {
        switch self {
        case .convert(let gpa, let size, let to): "convert \(Fmt.exactSize(size)) at \(Fmt.hex(gpa)) to \(to.rawValue)"
        case .inject(let kind, let vcpu, let gpa, let size):
            "inject \(kind.rawValue) into \(kind == .nmi ? "vCPU \(vcpu)" : "\(Fmt.exactSize(size)) at \(Fmt.hex(gpa))")"
        case .vcpu(let index, let action): "\(action.rawValue) vCPU \(index)"
        case .setPolicy(let p): "fault policy \(p.rawValue)"
        case .readMemory(let gpa, _): "read \(Fmt.hex(gpa))"
        }
    }

    /// The `:` command line's verbs for actions.
    enum Verb: String { case convert, policy }

    /// Whether it changes the VM (refused in read-only sessions).
    public var mutates: Bool { if case .readMemory = self { false } else { true } }
}

/// What the controller does for the UI: act on the source, write files, move a replay, or quit.
public enum Effect: Sendable, Equatable {
    case act(InspectorAction)
    /// Read memory where row `row` of the memslot view (in its current order) starts: the session looks the row
    /// up in its model (`Renderer.memslot(atRow:)`), so no frame has to keep the rows' order for a key.
    case readMemslot(row: Int)
    /// Write a snapshot of what the views show to a file.
    case snapshot
    /// Start recording the session to a file, or stop and finish it.
    case toggleRecording
    case replay(ReplayControl)
    case quit
}

/// The keys of a replay's timeline.
public enum ReplayControl: Sendable, Equatable {
    case togglePause
    case skip(seconds: Int)
    case previousBurst, nextBurst
}

/// What the status bar shows of a replay.
public struct ReplayStatus: Sendable, Equatable {
    public var positionNs: UInt64
    public var durationNs: UInt64
    public var speed: Double
    public var paused: Bool
    public init(positionNs: UInt64, durationNs: UInt64, speed: Double, paused: Bool) {
        self.positionNs = positionNs
        self.durationNs = durationNs
        self.speed = speed
        self.paused = paused
    }
}

/// What the status bar shows of a recording in progress.
public struct RecordingStatus: Sendable, Equatable {
    public var file: String
    public var startedNs: UInt64
    public init(file: String, startedNs: UInt64) { self.file = file; self.startedNs = startedNs }
}

/// One line of the key table: the input handler dispatches on it and the help screen prints it.
public struct KeyBinding: Sendable {
    public var keys: [Key]
    public var label: String
    public var help: String
    public var mutates: Bool
    let action: @Sendable (inout InspectorUI) -> [Effect]
}

/// A dialog over the views.
public enum Overlay: Sendable, Equatable {
    case help
    case confirm(prompt: String, effect: Effect)
    case injectMenu(selected: Int)
    case hexDump(gpa: UInt64, bytes: [UInt8]?)
}

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
    /// A guided tour's words for the step it is at (`demo --story`), above the story line.
    public var narration: String?
    /// The frame's width as `fit` last saw it (the help's terms wrap to it).
    var screenWidth = 80
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

    // MARK: The key table

    /// Every term the views use, for the help's second part: what a newcomer meets on screen and cannot look up.
    public static let terms: [(term: String, meaning: String)] = [
        ("private", "a page only the guest may use (KVM_MEMORY_ATTRIBUTE_PRIVATE); on confidential hardware the host cannot read it. Its memory is guest_memfd (kernel engine) or a memfd the VMM maps only into the private view (vmm engine)"),
        ("shared", "a page host and guest both use (I/O buffers, the VMM's own reads); what KVM maps by default"),
        ("view", "the guest reaches every page two ways: its private view (the address as it is) and the shared alias; an access through the view that does not match the page's attribute is a memory fault"),
        ("alias, a", "the shared alias: the same pages at the address with the alias bit set (query-vm's shared-alias); `gfn 257a` is page 257 reached through it"),
        ("gfn", "guest frame number: guest physical address / 4096"),
        ("slot", "a KVM memslot: guest physical addresses backed by host memory; `slot 1 (private, memfd)` is the slot behind the private view"),
        ("memfd", "the anonymous file that backs guest RAM; guest_memfd is KVM's own, which the host cannot map while pages are private"),
        ("flags", "KVM_EXIT_MEMORY_FAULT's flags, every bit shown: bit 3 PRIVATE, the access wanted private memory"),
        ("priv, shrd", "in the faults view: what the access wanted (the view it came through)"),
        ("engine", "kernel: KVM_SET_MEMORY_ATTRIBUTES and real KVM_EXIT_MEMORY_FAULT exits; vmm: the VMM enforces the attributes with its memslots, on VM types without private memory (each record says which)"),
        ("policy", "what the VMM does on a memory fault: convert (the page to what the access wanted), pause (stop the vCPU until resumed), report (record it; the guest retries)"),
        ("map glyphs", "█ private, ░ shared, ▓▒ a cell holding both, a coloured cell faulted in the last 3 s, · not known (traced map), ▒ selected"),
        ("trace", "a row or map from KVM's tracepoints rather than the VMM's own records; +trace on a row: both saw it"),
        ("conv", "on a memory-fault row: how long the conversion that resolved it took, exit to the vCPU's next KVM_RUN, as KVM's tracepoints timed it; its steps: request (the VMM deciding), convert (KVM_SET_MEMORY_ATTRIBUTES), re-entry (memslots, then KVM_RUN)"),
    ]

    /// The help: every key, then every term, wrapped to `width`.
    public static func helpLines(readOnly: Bool, width: Int) -> [String] {
        let keys = bindings.map { b in
            "\(Fmt.pad(b.label, 7)) \(b.help)" + (b.mutates && readOnly ? " (disabled: read-only)" : "")
        }
        var out = keys + ["", "Terms"]
        for t in terms {
            let lines = Renderer.wrapped(t.meaning, max(20, width - 12))
            out.append("\(Fmt.pad(t.term, 11)) \(lines.first ?? "")")
            out += lines.dropFirst().map { "            " + $0 }
        }
        return out
    }

    public static let bindings: [KeyBinding] = [
        KeyBinding(keys: [.tab], label: "Tab", help: "next view", mutates: false) { ui in
            ui.focus = Pane(rawValue: (ui.focus.rawValue + 1) % 4)!; return [] },
        KeyBinding(keys: [.backTab], label: "S-Tab", help: "previous view", mutates: false) { ui in
            ui.focus = Pane(rawValue: (ui.focus.rawValue + 3) % 4)!; return [] },
        KeyBinding(keys: [.char("1"), .char("2"), .char("3"), .char("4")], label: "1-4", help: "focus map, faults, memslots, vCPUs", mutates: false) { _ in [] },
        KeyBinding(keys: [.char("z")], label: "z", help: "maximise the focused view / back to all four", mutates: false) { ui in
            ui.maximized.toggle(); return [] },
        KeyBinding(keys: [.up, .char("k")], label: "↑ k", help: "move up", mutates: false) { ui in ui.move(dx: 0, dy: -1); return [] },
        KeyBinding(keys: [.down, .char("j")], label: "↓ j", help: "move down", mutates: false) { ui in ui.move(dx: 0, dy: 1); return [] },
        KeyBinding(keys: [.left, .char("h")], label: "← h", help: "move left (map)", mutates: false) { ui in ui.move(dx: -1, dy: 0); return [] },
        KeyBinding(keys: [.right, .char("l")], label: "→ l", help: "move right (map)", mutates: false) { ui in ui.move(dx: 1, dy: 0); return [] },
        KeyBinding(keys: [.char("g"), .home], label: "g", help: "to the start", mutates: false) { ui in ui.jump(toEnd: false); return [] },
        KeyBinding(keys: [.char("G"), .end], label: "G", help: "to the end", mutates: false) { ui in ui.jump(toEnd: true); return [] },
        KeyBinding(keys: [.char("+"), .char("=")], label: "+", help: "zoom in on the cursor", mutates: false) { ui in ui.zoom(in: true); return [] },
        KeyBinding(keys: [.char("-")], label: "-", help: "zoom out", mutates: false) { ui in ui.zoom(in: false); return [] },
        KeyBinding(keys: [.char("v")], label: "v", help: "start / end a range selection on the map", mutates: false) { ui in ui.toggleSelection(); return [] },
        KeyBinding(keys: [.char("p")], label: "p", help: "convert the selection to private (asks first)", mutates: true) { ui in ui.askConvert(toPrivate: true); return [] },
        KeyBinding(keys: [.char("s")], label: "s", help: "convert the selection to shared (asks first)", mutates: true) { ui in ui.askConvert(toPrivate: false); return [] },
        KeyBinding(keys: [.char("i")], label: "i", help: "fault injection: mce, nmi, discard, revoke, flip (what the VM offers)", mutates: true) { ui in
            guard !ui.injectionKinds.isEmpty else { ui.status = ("i: this source offers no fault injection", true); return [] }
            ui.overlay = .injectMenu(selected: 0); return [] },
        KeyBinding(keys: [.char("P")], label: "P", help: "pause / resume the selected vCPU", mutates: true) { ui in ui.pauseResume() },
        KeyBinding(keys: [.char(".")], label: ".", help: "run the selected vCPU to its next exit", mutates: true) { ui in
            [.act(.vcpu(index: ui.vcpuCursor, .step))] },
        KeyBinding(keys: [.char("f")], label: "f", help: "freeze / unfreeze the fault stream", mutates: false) { ui in
            ui.frozen.toggle(); ui.frozenAtSeq = nil; return [] },
        KeyBinding(keys: [.char("L")], label: "L", help: "faults: conversion latency histogram (steps a trace timed) / the selected fault", mutates: false) { ui in
            ui.showLatency.toggle(); return [] },
        KeyBinding(keys: [.char("/")], label: "/", help: "filter faults: vcpu=N access=read|write source=vmm|kernel gpa=A-B", mutates: false) { ui in
            // An empty prompt (Up brings the filter in force back to edit).
            if !ui.faultFilter.text.isEmpty && ui.promptHistory["/", default: []].last != ui.faultFilter.text {
                ui.promptHistory["/", default: []].append(ui.faultFilter.text)
            }
            ui.prompt = ("/", ""); return [] },
        KeyBinding(keys: [.char(":")], label: ":", help: "command: convert GPA SIZE private|shared, goto GPA, policy P, quit", mutates: false) { ui in
            ui.prompt = (":", ""); return [] },
        KeyBinding(keys: [.char("o")], label: "o", help: "sort memslots by slot, GPA, size", mutates: false) { ui in
            ui.memslotSort = ui.memslotSort.next; return [] },
        KeyBinding(keys: [.char("x")], label: "x", help: "hex dump of the page under the map cursor (in the memslot view: where the selected slot starts)",
                   mutates: false) { ui in
            if ui.focus == .memslots && ui.memslotCount > 0 { return [.readMemslot(row: min(ui.memslotCursor, ui.memslotCount - 1))] }
            let gpa = ui.cursorGFN * 4096
            ui.overlay = .hexDump(gpa: gpa, bytes: nil)
            ui.hexScroll = 0
            return [.act(.readMemory(gpa: gpa, size: 4096))] },
        KeyBinding(keys: [.char("S")], label: "S", help: "write a snapshot of every view to a file (.json and .txt)", mutates: false) { _ in
            [.snapshot] },
        KeyBinding(keys: [.char("R")], label: "R", help: "start / stop recording the session to a file", mutates: false) { ui in
            guard ui.replay == nil else { ui.status = ("R: this is a replay; it is a recording already", true); return [] }
            return [.toggleRecording] },
        KeyBinding(keys: [.char(" ")], label: "Space", help: "replay: pause / play", mutates: false) { ui in
            ui.replayOnly(.togglePause) },
        KeyBinding(keys: [.char("[")], label: "[", help: "replay: back 10 s", mutates: false) { ui in
            ui.replayOnly(.skip(seconds: -10)) },
        KeyBinding(keys: [.char("]")], label: "]", help: "replay: forward 10 s", mutates: false) { ui in
            ui.replayOnly(.skip(seconds: 10)) },
        KeyBinding(keys: [.char("{")], label: "{", help: "replay: previous fault burst", mutates: false) { ui in
            ui.replayOnly(.previousBurst) },
        KeyBinding(keys: [.char("}")], label: "}", help: "replay: next fault burst", mutates: false) { ui in
            ui.replayOnly(.nextBurst) },
        KeyBinding(keys: [.char("t")], label: "t", help: "next colour theme", mutates: false) { ui in
            ui.themeIndex = (ui.themeIndex + 1) % max(1, ui.themeNames.count)
            ui.status = ("theme \(ui.themeName)", false); return [] },
        KeyBinding(keys: [.char("?")], label: "?", help: "this help (j/k, PgUp/PgDn scroll; q or Esc closes)", mutates: false) { ui in
            ui.overlay = .help
            ui.helpScroll = 0
            return []
        },
        KeyBinding(keys: [.char("q")], label: "q", help: "quit", mutates: false) { _ in [.quit] },
    ]

    /// What the injection menu offers: the source's kinds (`InspectorModel.offeredInjections`, taken by `fit`).
    public var injectionKinds: [InjectionKind] = InjectionKind.allCases

    // MARK: Input

    public mutating func handle(_ key: Key) -> [Effect] {
        // A note shown at the start (the demo's socket path) gives the line back to the key hints at the first key.
        if noteUntilKey { noteUntilKey = false; status = nil }
        if let p = prompt { return handlePrompt(key, p) }
        if let o = overlay { return handleOverlay(key, o) }
        if case .char(let c) = key, let n = c.wholeNumberValue, (1...4).contains(n) {
            focus = Pane(rawValue: n - 1)!
            return []
        }
        guard let b = Self.bindings.first(where: { $0.keys.contains(key) }) else { return [] }
        if b.mutates && readOnly {
            status = ("read-only: \(b.help) is disabled", true)
            return []
        }
        return b.action(&self)
    }

    /// The prompt edits as readline does: Ctrl-U clears it, Ctrl-W deletes the word before the cursor, Up and Down
    /// walk what was entered before at this prompt (the filter in force first); control characters are not text.
    private mutating func handlePrompt(_ key: Key, _ p: (kind: Character, text: String)) -> [Effect] {
        let history = promptHistory[p.kind, default: []]
        switch key {
        case .escape: prompt = nil; historyIndex = nil
        case .backspace: prompt = (p.kind, String(p.text.dropLast()))
        case .char("\u{15}"): prompt = (p.kind, "")
        case .char("\u{17}"):
            let trimmed = p.text.reversed().drop { $0 == " " }.drop { $0 != " " }
            prompt = (p.kind, String(trimmed.reversed()))
        case .char(let c) where c.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }):
            prompt = (p.kind, p.text + String(c))
        case .up where !history.isEmpty:
            let i = max(0, (historyIndex ?? history.count) - 1)
            historyIndex = i
            prompt = (p.kind, history[i])
        case .down where historyIndex != nil:
            let i = historyIndex! + 1
            historyIndex = i < history.count ? i : nil
            prompt = (p.kind, i < history.count ? history[i] : "")
        case .enter:
            prompt = nil
            historyIndex = nil
            if !p.text.isEmpty && history.last != p.text { promptHistory[p.kind, default: []].append(p.text) }
            if promptHistory[p.kind, default: []].count > 100 { promptHistory[p.kind]?.removeFirst() }
            return p.kind == "/" ? applyFilter(p.text) : runCommand(p.text)
        default: break
        }
        return []
    }

    /// Where a scrolling dialog's first line goes on `key` (j/k, arrows, PgUp/PgDn or Space, g/G, Home/End), or nil
    /// when `key` does not scroll.
    static func scrolled(_ key: Key, _ at: Int, last: Int, page: Int) -> Int? {
        switch key {
        case .down, .char("j"): min(last, at + 1)
        case .up, .char("k"): max(0, at - 1)
        case .pageDown, .char(" "): min(last, at + page)
        case .pageUp: max(0, at - page)
        case .home, .char("g"): 0
        case .end, .char("G"): last
        default: nil
        }
    }

    private mutating func handleOverlay(_ key: Key, _ o: Overlay) -> [Effect] {
        switch o {
        case .help:
            // It scrolls, and closes only with q, Esc, Enter or ? (a key looked up must not close it).
            let count = Self.helpLines(readOnly: readOnly, width: screenWidth - 8).count
            if let to = Self.scrolled(key, helpScroll, last: max(0, count - 1), page: 10) { helpScroll = to }
            else if [.char("q"), .escape, .enter, .char("?")].contains(key) { overlay = nil }
        case .hexDump(_, let bytes):
            // It scrolls over the whole page read, and closes only with q, Esc, Enter or x (any key closed it).
            if let to = Self.scrolled(key, hexScroll, last: max(0, ((bytes?.count ?? 0) + 15) / 16 - 1), page: 16) { hexScroll = to }
            else if [.char("q"), .escape, .enter, .char("x")].contains(key) { overlay = nil }
        case .confirm(_, let effect):
            overlay = nil
            if key == .char("y") || key == .char("Y") { return [effect] }
            status = ("cancelled", false)
        case .injectMenu(let sel):
            let n = injectionKinds.count
            // The source may have changed under the open menu (a reconnection) to one that offers none.
            guard n > 0 else { overlay = nil; status = ("i: this source offers no fault injection", true); return [] }
            switch key {
            case .up, .char("k"): overlay = .injectMenu(selected: (sel + n - 1) % n)
            case .down, .char("j"): overlay = .injectMenu(selected: (sel + 1) % n)
            case .enter: overlay = nil; return inject(injectionKinds[sel % n])
            case .char(let c):
                overlay = nil
                if let kind = injectionKinds.first(where: { $0.rawValue.first == c }) { return inject(kind) }
            default: overlay = nil
            }
        }
        return []
    }

    // MARK: Actions

    mutating func move(dx: Int, dy: Int) {
        switch focus {
        case .map:
            let span = effectivePagesPerCell
            let delta = Int64(dx) + Int64(dy) * Int64(mapColumns)
            let cell = Int64(cursorGFN / span) + delta
            let maxCell = Int64((totalPages - 1) / span)
            cursorGFN = UInt64(min(max(cell, 0), maxCell)) * span
            scrollToCursor()
        case .faults: faultCursor = max(0, faultCursor - dy)
        case .memslots: memslotCursor = min(max(0, memslotCursor + dy), max(0, memslotCount - 1))
        case .vcpus: vcpuCursor = min(max(0, vcpuCursor + dy + dx), max(0, vcpuCount - 1))
        }
    }

    mutating func jump(toEnd: Bool) {
        switch focus {
        case .map: cursorGFN = toEnd ? (totalPages - 1) / effectivePagesPerCell * effectivePagesPerCell : 0; scrollToCursor()
        case .faults: faultCursor = toEnd ? 0 : Int.max / 2
        case .memslots: memslotCursor = toEnd ? max(0, memslotCount - 1) : 0
        case .vcpus: vcpuCursor = toEnd ? max(0, vcpuCount - 1) : 0
        }
    }

    /// Keeps the cursor's cell on screen.
    public mutating func scrollToCursor() {
        let span = effectivePagesPerCell
        let cell = cursorGFN / span
        let perRow = UInt64(max(1, mapColumns))
        let visible = perRow * UInt64(max(1, mapRows))
        firstCell = min(firstCell, cell / perRow * perRow)
        if cell >= firstCell + visible { firstCell = (cell / perRow + 1) * perRow - visible }
        if pagesPerCell == nil { firstCell = 0 }
    }

    mutating func zoom(in zoomIn: Bool) {
        let fit = MapGeometry.fitting(totalPages: totalPages, columns: mapColumns, rows: mapRows)
        var span = effectivePagesPerCell
        if zoomIn { span = max(1, span / 2) } else { span = span * 2 }
        pagesPerCell = span >= fit ? nil : span
        cursorGFN = cursorGFN / effectivePagesPerCell * effectivePagesPerCell
        firstCell = 0
        scrollToCursor()
        status = ("zoom: \(Fmt.size(effectivePagesPerCell * 4096)) per cell", false)
    }

    mutating func toggleSelection() {
        focus = .map
        let span = effectivePagesPerCell
        if let anchor = selectionAnchor {
            let lo = min(anchor, cursorGFN), hi = max(anchor, cursorGFN) + span - 1
            selection = lo...min(hi, totalPages - 1)
            selectionAnchor = nil
            status = ("selected \(Fmt.exactSize((selection!.upperBound - lo + 1) * 4096)) at \(Fmt.hex(lo * 4096))", false)
        } else {
            selectionAnchor = cursorGFN
            selection = nil
            status = ("selecting from \(Fmt.hex(cursorGFN * 4096)); v again ends the range", false)
        }
    }

    /// The selection, or the cell under the cursor, in bytes.
    public var targetRange: (gpa: UInt64, size: UInt64) {
        if let s = selection { return (s.lowerBound * 4096, (s.upperBound - s.lowerBound + 1) * 4096) }
        let span = effectivePagesPerCell
        return (cursorGFN * 4096, min(span, totalPages - cursorGFN) * 4096)
    }

    mutating func askConvert(toPrivate: Bool) {
        let (gpa, size) = targetRange
        let to: PageAttribute = toPrivate ? .private : .shared
        overlay = .confirm(prompt: "Convert \(Fmt.exactSize(size)) at \(Fmt.hex(gpa)) to \(to.rawValue)? y/N",
                           effect: .act(.convert(gpa: gpa, size: size, to: to)))
    }

    /// The selected vCPU and the selection (or the cell under the cursor); each source takes what its kind needs.
    mutating func inject(_ kind: InjectionKind) -> [Effect] {
        let (gpa, size) = targetRange
        return askingFirst("Inject \(kind.rawValue) into vCPU \(vcpuCursor)", .act(.inject(kind, vcpu: vcpuCursor, gpa: gpa, size: size)))
    }

    /// `effect` at once on vmscope's own VMM or with `--allow-control`; on a VM vmscope did not start, after a y
    /// to "`what` of …?" (P on someone's QEMU stopped it at once, one Shift from p).
    mutating func askingFirst(_ what: String, _ effect: Effect) -> [Effect] {
        guard let foreign = foreignVM, !allowControl else { return [effect] }
        overlay = .confirm(prompt: "\(what) of \(foreign)? y/N (attach --allow-control does not ask)", effect: effect)
        return []
    }

    mutating func replayOnly(_ c: ReplayControl) -> [Effect] {
        guard replay != nil else { status = ("that key moves a replay's timeline (vmscope replay FILE)", true); return [] }
        return [.replay(c)]
    }

    mutating func pauseResume() -> [Effect] {
        let state = vcpuCursor < vcpuStates.count ? vcpuStates[vcpuCursor] : .known(.running)
        let stopped = state == .paused || state == .faultStopped
        return askingFirst("\(stopped ? "Resume" : "Pause") vCPU \(vcpuCursor)", .act(.vcpu(index: vcpuCursor, stopped ? .resume : .pause)))
    }

    mutating func applyFilter(_ text: String) -> [Effect] {
        switch FaultFilter.parse(text) {
        case .success(let f): faultFilter = f; faultCursor = 0; status = (f.text.isEmpty ? "filter cleared" : "filter: \(f.text)", false)
        case .failure(let e): status = (e.message, true)
        }
        return []
    }

    mutating func runCommand(_ line: String) -> [Effect] {
        let words = line.split(separator: " ").map(String.init)
        guard let verb = words.first else { return [] }
        switch verb {
        case "q", "quit": return [.quit]
        case "goto":
            guard words.count == 2, let gpa = Fmt.parseSize(words[1]), gpa / 4096 < totalPages else {
                status = ("usage: goto GPA (inside RAM)", true); return []
            }
            focus = .map
            cursorGFN = gpa / 4096 / effectivePagesPerCell * effectivePagesPerCell
            scrollToCursor()
            return []
        case InspectorAction.Verb.convert.rawValue:
            guard words.count == 4, let gpa = Fmt.parseSize(words[1]), let size = Fmt.parseSize(words[2]),
                  let to = PageAttribute(rawValue: words[3]), to != .none else {
                status = ("usage: convert GPA SIZE private|shared (e.g. convert 0x100000 2M shared)", true); return []
            }
            guard !readOnly else { status = ("read-only: conversions are disabled", true); return [] }
            return [.act(.convert(gpa: gpa, size: size, to: to))]
        case InspectorAction.Verb.policy.rawValue:
            guard words.count == 2, let policy = FaultPolicy(rawValue: words[1]) else {
                status = ("usage: policy \(FaultPolicy.allCases.map(\.rawValue).joined(separator: "|"))", true); return []
            }
            guard !readOnly else { status = ("read-only: policy changes are disabled", true); return [] }
            return [.act(.setPolicy(policy))]
        default:
            status = ("unknown command '\(verb)': convert, goto, policy, quit", true)
            return []
        }
    }
}

public enum MemslotSort: String, Sendable {
    case slot, gpa, size
    var next: MemslotSort { switch self { case .slot: .gpa; case .gpa: .size; case .size: .slot } }
}

/// The fault stream's filter: `vcpu=N access=read|write|exec|unknown source=vmm|kernel gpa=A-B`.
public struct FaultFilter: Sendable, Equatable {
    public var vcpu: Int?
    public var access: FaultAccess?
    public var source: FaultSource?
    public var gpaRange: ClosedRange<UInt64>?
    public var text = ""

    public init() {}

    public struct ParseError: Error, Equatable { public var message: String }

    /// The keys: the fault record members they test, by the record's own names.
    enum Key: RawRepresentable, CaseIterable {
        case vcpu, access, source, gpa
        var member: FaultRecord.Member {
            switch self {
            case .vcpu: .vcpu
            case .access: .access
            case .source: .source
            case .gpa: .gpa
            }
        }
        var rawValue: String { member.name }
        init?(rawValue: String) {
            guard let k = Self.allCases.first(where: { $0.rawValue == rawValue }) else { return nil }
            self = k
        }
    }

    public static func parse(_ text: String) -> Result<FaultFilter, ParseError> {
        var f = FaultFilter()
        f.text = text.trimmingCharacters(in: " ")
        for word in text.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { return .failure(ParseError(message: "filter: '\(word)' is not key=value")) }
            // The filter's keys are the record members they test.
            switch FaultFilter.Key(rawValue: kv[0]) {
            case .vcpu?:
                guard let n = Int(kv[1]), n >= 0 else { return .failure(ParseError(message: "filter: vcpu wants a number")) }
                f.vcpu = n
            case .access?:
                guard let a = FaultAccess(rawValue: kv[1]) else { return .failure(ParseError(message: "filter: access is \(FaultAccess.choices)")) }
                f.access = a
            case .source?:
                guard let s = FaultSource(rawValue: kv[1]) else { return .failure(ParseError(message: "filter: source is \(FaultSource.choices)")) }
                f.source = s
            case .gpa?:
                let ends = kv[1].split(separator: "-").map { Fmt.parseSize(String($0)) }
                guard ends.count == 2, let a = ends[0], let b = ends[1], a <= b else {
                    return .failure(ParseError(message: "filter: gpa wants START-END, e.g. gpa=0x100000-0x200000"))
                }
                f.gpaRange = a...b
            default:
                return .failure(ParseError(message: "filter: unknown key '\(kv[0])' (vcpu, access, source, gpa)"))
            }
        }
        return .success(f)
    }

    public func matches(_ r: FaultRecord) -> Bool {
        if let vcpu, r.vcpu != vcpu { return false }
        if let access, r.access != access { return false }
        if let source, r.source != source { return false }
        if let gpaRange, !gpaRange.contains(r.gpa) { return false }
        return true
    }

    public var isEmpty: Bool { vcpu == nil && access == nil && source == nil && gpaRange == nil }
}
