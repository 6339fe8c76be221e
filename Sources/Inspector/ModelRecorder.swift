import ControlProtocol
import Foundation

extension InspectorModel {
    /// A `view` entry of a stock QEMU's recording (a snapshot document, docs/snapshot.schema.json): every view but
    /// the fault records (those come as events), as the inspector showed them then.
    public mutating func apply(view j: JSON, intervalNs: UInt64) {
        let d = SnapshotFormat.Document(json: j)
        var info = VMInfo(d.vm)
        info.qemuVersion = d.qemu.version
        info.runState = d.qemu.runState
        info.accelerator = d.qemu.accelerator
        info.machine = d.qemu.machine
        info.arch = d.qemu.arch
        vm = info
        memslots = d.memslots.map { s in
            var row = MemslotRow(s.memslot)
            row.slotKnown = s.slotKnown
            row.privatePages = s.privatePages
            row.sharedPages = s.sharedPages
            row.regionName = s.region
            row.regionOffset = s.regionOffset
            row.device = s.device
            return row
        }
        if let a = d.attributes { apply(attributes: a) }
        apply(vcpus: d.vcpus.map { c in
            var row = VCPURow(index: c.index, threadID: c.threadID, state: c.state, lastExit: c.lastExit, exitCounts: c.exitCounts,
                              registers: c.registers, segments: c.segments, controlRegisters: c.controlRegisters, stats: c.stats,
                              guest: c.guest)
            row.exitTotal = c.exits
            return row
        }, intervalNs: intervalNs)
        vmStats = d.vmStats
        var panes: [Pane: String] = [:]
        for (name, why) in d.unavailable { if let p = Pane.allCases.first(where: { $0.name == name }) { panes[p] = why } }
        unavailable = panes
        // A stock QEMU gives no private/shared map: as attached, the map is the heat of the recorded (traced) rows
        // over its RAM.
        heatMapNote = (d.attributes?.runs.isEmpty ?? true) && panes[.map] == nil && info.qemuVersion != nil
            ? "recorded from \(info.qemuVersion ?? "QEMU"), which gives no private/shared map over QMP; cells show the recorded traced accesses" : nil
    }
}

/// Records what the inspector sees of a VM that vmscope's recorder cannot ask itself: a stock QEMU (no
/// `query-snapshot`, and one client per QMP monitor, which the inspector holds). The file is a recording of format
/// version 2 (docs/recording.md): `view` entries (a snapshot document of the views, once a second when they
/// changed) and the fault records the inspector got (KVM's tracepoint rows, `source: trace`) as `MEMORY_FAULT`
/// events, which `vmscope replay` plays as it plays a VMM's.
///
/// It only reads the models it is given; whoever drives the source gives it one now and then (`observe`).
public final class ModelRecorder: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the session hands it to its recording thread).
    public let writer: RecordingWriter
    private var lastSeq: UInt64
    private var lastView: JSON?
    private var lastViewNs: UInt64 = 0
    /// The views are written at most this often (when they changed).
    public var viewIntervalNs: UInt64 = 1_000_000_000

    public init(path: String, socket: String, greeting: JSON, recorder: String, model: InspectorModel) throws(RecordingError) {
        let now = HostClock.monotonicNs()
        var header = Recording.Header(startedAtWallNs: HostClock.wallNs(), startedAtMonotonicNs: now, socket: socket,
                                      greeting: greeting, recorder: recorder)
        header.version = 2
        writer = try RecordingWriter(path: path, header: header)
        // From now on: the records the views held before are history, as a VMM's recording's snapshot makes them.
        lastSeq = model.visibleFaults.last?.seq ?? 0
        try observe(model, nowNs: now)
    }

    /// Writes what changed since the last call: new fault records (a gap in their numbers becomes `dropped`), and
    /// the views at most once a second.
    public func observe(_ m: InspectorModel, nowNs: UInt64) throws(RecordingError) {
        // Batches of at most 64 records without a gap inside; a gap (records the views no longer held, or never got)
        // is the next batch's `dropped`, as a VMM's events say it.
        var batch: [FaultRecord] = [], dropped: UInt64 = 0
        func write() throws(RecordingError) {
            guard !batch.isEmpty else { return }
            try writer.append(.event(Event.memoryFault(FaultBatch(records: batch, dropped: dropped)).message(wallNs: HostClock.wallNs())),
                              monotonicNs: nowNs)
            batch = []
            dropped = 0
        }
        for f in m.visibleFaults where f.seq > lastSeq {
            let gap = lastSeq > 0 && f.seq > lastSeq + 1 ? f.seq - lastSeq - 1 : 0
            if gap > 0 || batch.count == 64 { try write() }
            dropped += gap
            batch.append(f)
            lastSeq = f.seq
        }
        try write()
        guard lastView == nil || nowNs &- lastViewNs >= viewIntervalNs else { return }
        let view = Snapshot.json(m, faultLimit: 0, takenAtWallNs: 0, origin: .live)
        guard view != lastView else { return }
        try writer.append(.view(view), monotonicNs: nowNs)
        lastView = view
        lastViewNs = nowNs
    }

    public func finish(reason: String, peerGone: Bool = false) throws(RecordingError) {
        try writer.finish(reason: reason, peerGone: peerGone, monotonicNs: HostClock.monotonicNs())
    }
}
