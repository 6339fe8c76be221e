import ControlProtocol

/// The inspector's keys: the help's terms, the key table, and how a key press (or a prompt's, an overlay's) becomes a change of state and effects.
extension InspectorUI {
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
        ("map glyphs", "█ private, ░ shared, ▓▒ a cell holding both, a coloured cell faulted in the last 3 s, · not known (traced map), ◆ a guest request pending (traced map), ▒ selected"),
        ("trace", "a row or map from KVM's tracepoints rather than the VMM's own records; +trace on a row: both saw it (the kernel's cross-check of the VMM's records; none without tracing: root, libtracefs1 and libtraceevent1)"),
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

    // MARK: Input

    public mutating func handle(_ key: Key) -> [Effect] {
        // A note shown at the start (the demo's socket path) gives the line back to the key hints at the first key,
        // or to the next note that waited behind it.
        if noteUntilKey {
            if laterNotes.isEmpty { noteUntilKey = false; status = nil } else { status = (laterNotes.removeFirst(), false) }
        }
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
            // The last scroll position is the one that shows the last page full: past it, j moved nothing on
            // screen and k then seemed dead for a page's worth of presses.
            let count = Self.helpLines(readOnly: readOnly, width: screenWidth - 8).count
            let last = max(0, count - Renderer.dialogRows(count, height: screenHeight))
            if let to = Self.scrolled(key, helpScroll, last: last, page: 10) { helpScroll = to }
            else if [.char("q"), .escape, .enter, .char("?")].contains(key) { overlay = nil }
        case .hexDump(_, let bytes):
            // It scrolls over the whole page read, and closes only with q, Esc, Enter or x (any key closed it).
            let rows = ((bytes?.count ?? 0) + 15) / 16
            if let to = Self.scrolled(key, hexScroll, last: max(0, rows - Renderer.dialogRows(rows, height: screenHeight)), page: 16) { hexScroll = to }
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
}
