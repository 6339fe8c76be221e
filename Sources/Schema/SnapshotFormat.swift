/// The snapshot format (`vmscope snapshot --json`, `S`, `vmscope replay --dump-at`; docs/snapshot.schema.json):
/// the protocol's types where it carries them (memslots, attribute runs, fault records), and the members it adds,
/// spelled here.
public enum SnapshotFormat {
    public static let format = "vmscope-snapshot"
    public static let version = 1

    /// Where the content came from: `live`, or a recording replayed to `offsetNs`.
    public static func origin(recordingFile: String?, offsetNs: UInt64) -> JSON {
        guard let file = recordingFile else { return .object([("kind", .string("live"))]) }
        return .object([("kind", .string("recording")), ("file", .string(file)), ("offset-ns", .u(offsetNs))])
    }

    /// A stock QEMU's own facts, beside what `query-vm` says.
    public struct QEMUFacts: Sendable {
        public var version: String?, runState: String?, accelerator: String?, machine: String?, arch: String?
        public init(version: String?, runState: String?, accelerator: String?, machine: String?, arch: String?) {
            self.version = version; self.runState = runState; self.accelerator = accelerator; self.machine = machine; self.arch = arch
        }
    }

    public static func vm(_ d: VMDescription, qemu q: QEMUFacts) -> JSON {
        func s(_ v: String?) -> JSON { .opt(v.map(JSON.string)) }
        return .object(d.members(inSnapshot: true) + [
            ("qemu-version", s(q.version)), ("run-state", s(q.runState)), ("accelerator", s(q.accelerator)),
            ("machine", s(q.machine)), ("arch", s(q.arch)),
        ])
    }

    public static func memslot(_ m: Memslot, slotKnown: Bool, privatePages: UInt64, sharedPages: UInt64, region: String?,
                               regionOffset: UInt64?, device: String?) -> JSON {
        .object(m.members(slotKnown: slotKnown) + [
            ("private-pages", .u(privatePages)), ("shared-pages", .u(sharedPages)), ("region", .opt(region.map(JSON.string))),
            ("region-offset", .opt(regionOffset.map(JSON.u))), ("device", .opt(device.map(JSON.string))),
        ])
    }

    public static func faults(_ records: [FaultRecord], limit: Int, received: UInt64, dropped: UInt64, eventsDropped: UInt64) -> JSON {
        .object([(FaultsKey.records, .array(records.map(\.json))), ("limit", .i(limit)), ("received", .u(received)),
                 (FaultsKey.dropped, .u(dropped)), ("events-dropped", .u(eventsDropped))])
    }

    static func pairs(_ p: [(String, UInt64)]) -> JSON { .object(p.map { ($0.0, .u($0.1)) }) }

    public static func vcpu(index: Int, threadID: Int, state: Open<VCPURunState>, lastExit: String, exits: UInt64,
                            exitCounts: [(String, UInt64)], registers: [(String, UInt64)], segments: [(String, UInt64)],
                            controlRegisters: [(String, UInt64)], stats: [(String, UInt64)], guest: [(String, UInt64)]) -> JSON {
        .object([
            (VCPUKey.index, .i(index)), (VCPUKey.threadID, .i(threadID)), (VCPUKey.state, .e(state)),
            (VCPUKey.lastExit, .string(lastExit)), ("exits", .u(exits)), (VCPUKey.exitCounts, pairs(exitCounts)),
            (VCPUKey.regs, pairs(registers)), ("segments", pairs(segments)), ("control-registers", pairs(controlRegisters)),
            (VCPUKey.stats, pairs(stats)), (VCPUKey.guest, pairs(guest)),
        ])
    }

    public static func document(takenAtWallNs: UInt64, origin: JSON, peer: String?, vm: JSON, memslots: [JSON], attributes: JSON,
                                faults: JSON, vcpus: [JSON], vmStats: [(String, UInt64)], unavailable: [(String, String)]) -> JSON {
        .object([
            ("format", .string(format)), ("version", .i(version)), ("taken-at-ns", .u(takenAtWallNs)),
            ("origin", origin), ("peer", .opt(peer.map(JSON.string))), ("vm", vm), ("memslots", .array(memslots)),
            ("attributes", attributes), ("faults", faults), ("vcpus", .array(vcpus)), ("vm-stats", pairs(vmStats)),
            ("unavailable", .object(unavailable.map { ($0.0, .string($0.1)) })),
        ])
    }
}
