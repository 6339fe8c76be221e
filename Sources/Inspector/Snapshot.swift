import ControlProtocol

/// A snapshot: every view's content at one instant, as JSON (`vmscope snapshot --json`, `S` in the TUI,
/// `vmscope replay --dump-at`) or as the panes drawn in text (`--text`). Its schema is docs/snapshot.schema.json.
///
/// It is written from the model, i.e. from what the views show, whatever fed the model: a live VMM's
/// `query-snapshot`, a stock QEMU's queries, or a recording replayed to a point in time. So a live snapshot and a
/// replayed one at the same instant compare member by member.
public enum Snapshot {
    public static let format = "vmscope-snapshot"
    public static let version = 1

    /// Where the snapshot's content came from.
    public enum Origin: Sendable, Equatable {
        case live
        /// A recording, replayed to `offsetNs` after it started.
        case recording(file: String, offsetNs: UInt64)
    }

    public static func json(_ m: InspectorModel, faultLimit: Int = 256, takenAtWallNs: UInt64, origin: Origin) -> JSON {
        let peer: JSON = switch m.connection {
        case .connected(let p): .string(p)
        case .disconnected: .null
        }
        let originJSON: JSON = switch origin {
        case .live: .object([("kind", .string("live"))])
        case .recording(let file, let offset):
            .object([("kind", .string("recording")), ("file", .string(file)), ("offset-ns", .u(offset))])
        }
        let v = m.vm
        let vm: JSON = .object([
            ("name", .string(v.name)), ("pid", .opt(v.pid.map { .i($0) })), ("attribute-engine", .string(v.engine)),
            (Wire.sharedAlias.name, .opt(v.sharedAliasBit.map { .i($0) })), ("ram-size", .u(v.ramSize)), ("vcpus", .i(v.vcpus)),
            ("mutations-allowed", .bool(v.mutationsAllowed)), ("fault-injection-allowed", .bool(v.faultInjectionAllowed)),
            (Wire.faultPolicy.name, .string(v.policy)), ("qemu-version", .opt(v.qemuVersion.map { .string($0) })),
            ("run-state", .opt(v.runState.map { .string($0) })), ("accelerator", .opt(v.accelerator.map { .string($0) })),
            ("machine", .opt(v.machine.map { .string($0) })), ("arch", .opt(v.arch.map { .string($0) })),
        ])
        let memslots: JSON = .array(m.memslots.map { s in
            .object([
                ("slot", s.slotKnown ? .i(s.slot) : .null), ("as-id", .i(s.asID)), ("gpa", .u(s.gpa)), ("size", .u(s.size)),
                ("flags", .u(s.flags)), ("flag-names", .array(s.flagNames.map { .string($0) })), ("view", .string(s.view)),
                ("backing", .string(s.backing)), ("guest-memfd-offset", .opt(s.guestMemfdOffset.map { .u($0) })),
                ("userspace-addr", .u(s.userspaceAddress)), ("private-pages", .u(s.privatePages)),
                ("shared-pages", .u(s.sharedPages)), ("region", .opt(s.regionName.map { .string($0) })),
                ("region-offset", .opt(s.regionOffset.map { .u($0) })), ("device", .opt(s.device.map { .string($0) })),
            ])
        })
        var attributes: JSON = .null
        if m.unavailable[.map] == nil {
            let privateBytes = m.runs.filter(\.isPrivate).reduce(UInt64(0)) { $0.saturatingAdd($1.size) }
            let sharedBytes = m.runs.filter { !$0.isPrivate }.reduce(UInt64(0)) { $0.saturatingAdd($1.size) }
            attributes = .object([
                ("runs", .array(m.runs.map { .object([("gpa", .u($0.gpa)), ("size", .u($0.size)), ("private", .bool($0.isPrivate))]) })),
                (Wire.privateBytes.name, .u(privateBytes)), ("shared-bytes", .u(sharedBytes)),
            ])
        }
        var faults: JSON = .null
        if m.unavailable[.faults] == nil {
            faults = .object([
                ("records", .array(m.visibleFaults.suffix(max(0, faultLimit)).map(\.json))),
                ("limit", .i(faultLimit)), ("received", .u(m.faultsReceived)), ("dropped", .u(m.faultsDropped)),
                ("events-dropped", .u(m.eventsDropped)),
            ])
        }
        func pairs(_ p: [(String, UInt64)]) -> JSON { .object(p.map { ($0.0, .u($0.1)) }) }
        let vcpus: JSON = .array(m.vcpus.map { c in
            .object([
                ("index", .i(c.index)), ("thread-id", .i(c.threadID)), ("state", .string(c.state)),
                ("last-exit", .string(c.lastExit)), ("exits", .u(c.totalExits)), ("exit-counts", pairs(c.exitCounts)),
                ("regs", pairs(c.registers)), ("segments", pairs(c.segments)),
                ("control-registers", pairs(c.controlRegisters)), ("stats", pairs(c.stats)), ("guest", pairs(c.guest)),
            ])
        })
        return .object([
            ("format", .string(format)), ("version", .i(version)), ("taken-at-ns", .u(takenAtWallNs)),
            ("origin", originJSON), ("peer", peer), ("vm", vm), ("memslots", memslots), ("attributes", attributes),
            ("faults", faults), ("vcpus", vcpus), ("vm-stats", pairs(m.vmStats)),
            ("unavailable", .object(Pane.allCases.compactMap { p in m.unavailable[p].map { (p.name, .string($0)) } })),
        ])
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
    public mutating func apply(snapshot j: JSON) {
        apply(vm: j["vm"] ?? .null)
        apply(memslots: j["memslots"] ?? .null)
        apply(attributes: j["attributes"] ?? .null)
        appendHistory((j["faults"]?["records"]?.arrayValue ?? []).compactMap(FaultRow.init))
        apply(vcpus: j["vcpus"] ?? .null, intervalNs: 1)
    }
}
