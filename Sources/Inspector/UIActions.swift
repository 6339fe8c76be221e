import ControlProtocol

/// What the keys do: cursor moves, selections, the asks before a mutation, the command prompt's commands.
extension InspectorUI {
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
