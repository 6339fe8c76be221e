import ControlProtocol

/// A snapshot: every view's content at one instant, as JSON (`vmscope snapshot --json`, `S` in the TUI,
/// `vmscope replay --dump-at`) or as the panes drawn in text (`--text`). Its schema is docs/snapshot.schema.json.
///
/// It is written from the model, i.e. from what the views show, whatever fed the model: a live VMM's
/// `query-snapshot`, a stock QEMU's queries, or a recording replayed to a point in time. So a live snapshot and a
/// replayed one at the same instant compare member by member.
public enum Snapshot {
    public static let format = SnapshotFormat.format
    public static let version = SnapshotFormat.version

    /// Where the snapshot's content came from.
    public enum Origin: Sendable, Equatable {
        case live
        /// A recording, replayed to `offsetNs` after it started.
        case recording(file: String, offsetNs: UInt64)
    }

    public static func json(_ m: InspectorModel, faultLimit: Int = 256, takenAtWallNs: UInt64, origin: Origin) -> JSON {
        let peer: String? = switch m.connection {
        case .connected(let p): p
        case .disconnected: nil
        }
        let originJSON: JSON = switch origin {
        case .live: SnapshotFormat.origin(recordingFile: nil, offsetNs: 0)
        case .recording(let file, let offset): SnapshotFormat.origin(recordingFile: file, offsetNs: offset)
        }
        let v = m.vm
        let description = VMDescription(json: .null).with {
            $0.name = v.name; $0.pid = v.pid; $0.attributeEngine = Open(v.engine); $0.sharedAlias = v.sharedAliasBit
            $0.ramSize = v.ramSize; $0.vcpus = v.vcpus; $0.mutationsAllowed = v.mutationsAllowed
            $0.faultInjectionAllowed = v.faultInjectionAllowed; $0.faultPolicy = Open(v.policy)
        }
        let vm = SnapshotFormat.vm(description, qemu: .init(version: v.qemuVersion, runState: v.runState, accelerator: v.accelerator,
                                                           machine: v.machine, arch: v.arch, libvirtState: v.libvirtState,
                                                           libvirtFacts: v.libvirtFacts))
        let memslots = m.memslots.map { s in
            SnapshotFormat.memslot(s.memslot, slotKnown: s.slotKnown, privatePages: s.privatePages, sharedPages: s.sharedPages,
                                   region: s.regionName, regionOffset: s.regionOffset, device: s.device)
        }
        var attributes: JSON = .null
        if m.unavailable[.map] == nil {
            let privateBytes = m.runs.filter(\.isPrivate).reduce(UInt64(0)) { $0.saturatingAdd($1.size) }
            let sharedBytes = m.runs.filter { !$0.isPrivate }.reduce(UInt64(0)) { $0.saturatingAdd($1.size) }
            attributes = AttributeRuns(runs: m.runs, privateBytes: privateBytes, sharedBytes: sharedBytes).json
        }
        var faults: JSON = .null
        if m.unavailable[.faults] == nil {
            faults = SnapshotFormat.faults(Array(m.visibleFaults.suffix(max(0, faultLimit))), limit: faultLimit,
                                           received: m.faultsReceived, dropped: m.faultsDropped, eventsDropped: m.eventsDropped)
        }
        let vcpus = m.vcpus.map { c in
            SnapshotFormat.vcpu(index: c.index, threadID: c.threadID, state: c.state, lastExit: c.lastExit, exits: c.totalExits,
                                exitCounts: c.exitCounts, registers: c.registers, segments: c.segments,
                                controlRegisters: c.controlRegisters, stats: c.stats, guest: c.guest)
        }
        return SnapshotFormat.document(takenAtWallNs: takenAtWallNs, origin: originJSON, peer: peer, vm: vm, memslots: memslots,
                                       attributes: attributes, faults: faults, vcpus: vcpus, vmStats: m.vmStats,
                                       unavailable: Pane.allCases.compactMap { p in m.unavailable[p].map { (p.name, $0) } })
    }

    /// The four views as the TUI draws them, each maximised at `width` columns, under the status bar: plain
    /// text for a ticket (no colour; ASCII glyphs when `ascii`).
    public static func text(_ m: InspectorModel, width: Int = 120, ascii: Bool = false, nowNs: UInt64 = 0) -> String {
        let renderer = Renderer(ascii: ascii, nowNs: nowNs)
        var ui = InspectorUI()
        ui.ascii = ascii
        ui.maximized = true
        var out: [String] = []
        for pane in Pane.allCases {
            ui.focus = pane
            let height: Int = switch pane {
            case .map: 28
            case .faults: max(16, min(60, m.visibleFaults.count + 6))
            case .memslots: max(16, m.memslots.count + 6)
            case .vcpus: max(16, 14 * max(1, m.vcpus.count) + 4)
            }
            ui.fit(m, width: width, height: height)
            var lines = renderer.render(m, ui, width: width, height: height).lines
            lines.removeLast()   // the key hints
            if pane != .map { lines.removeFirst() }   // the status bar, once is enough
            out += lines.map { String($0.reversed().drop { $0 == " " }.reversed()) }
        }
        return out.joined(separator: "\n") + "\n"
    }
}

extension Pane {
    /// The pane's name in snapshots.
    public var name: String {
        switch self {
        case .map: "map"
        case .faults: "faults"
        case .memslots: "memslots"
        case .vcpus: "vcpus"
        }
    }
}

extension InspectorModel {
    /// A vmscope VMM's `query-snapshot` reply: the whole model at once. Its fault records are history: they are
    /// appended as the newest, marked on the map at their own time (the VMM's CLOCK_MONOTONIC, this host's) and
    /// not counted in the per-second rate, which only faults seen arriving make.
    public mutating func apply(snapshot s: StateSnapshot) {
        apply(vm: s.vm)
        apply(memslots: s.memslots)
        apply(attributes: s.attributes)
        appendHistory(s.faults.records)
        apply(vcpus: s.vcpus, intervalNs: 1)
    }
    public mutating func apply(snapshot j: JSON) { apply(snapshot: StateSnapshot(json: j)) }
}
