/// The snapshot format (`vmscope snapshot --json`, `S`, `vmscope replay --dump-at`; docs/snapshot.schema.json):
/// the protocol's types where it carries them (memslots, attribute runs, fault records), and the members it adds,
/// spelled here.
public enum SnapshotFormat {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let kind = "kind", file = "file", offsetNs = "offset-ns", libvirtState = "libvirt-state"
        static let libvirtFacts = "libvirt-facts", qemuVersion = "qemu-version", runState = "run-state"
        static let accelerator = "accelerator", machine = "machine", arch = "arch", privatePages = "private-pages"
        static let sharedPages = "shared-pages", region = "region", regionOffset = "region-offset"
        static let device = "device", limit = "limit", received = "received", eventsDropped = "events-dropped"
        static let exits = "exits", segments = "segments", controlRegisters = "control-registers", format = "format"
        static let version = "version", takenAtNs = "taken-at-ns", origin = "origin", peer = "peer", vm = "vm"
        static let memslots = "memslots", attributes = "attributes", faults = "faults", vcpus = "vcpus"
        static let vmStats = "vm-stats", unavailable = "unavailable"
    }

    public static let format = "vmscope-snapshot"
    public static let version = 1

    /// Where the content came from: `live`, or a recording replayed to `offsetNs`.
    public static func origin(recordingFile: String?, offsetNs: UInt64) -> JSON {
        guard let file = recordingFile else { return .object([(Key.kind, .string("live"))]) }
        return .object([(Key.kind, .string("recording")), (Key.file, .string(file)), (Key.offsetNs, .u(offsetNs))])
    }

    /// A stock QEMU's own facts, beside what `query-vm` says.
    public struct QEMUFacts: Sendable {
        public var version: String?, runState: String?, accelerator: String?, machine: String?, arch: String?
        /// A libvirt domain's state and reason ("running, booted") and its XML's facts (`attach libvirt:`).
        public var libvirtState: String?, libvirtFacts: String?
        public init(version: String?, runState: String?, accelerator: String?, machine: String?, arch: String?,
                    libvirtState: String? = nil, libvirtFacts: String? = nil) {
            self.version = version; self.runState = runState; self.accelerator = accelerator; self.machine = machine; self.arch = arch
            self.libvirtState = libvirtState; self.libvirtFacts = libvirtFacts
        }
    }

    public static func vm(_ d: VMDescription, qemu q: QEMUFacts) -> JSON {
        func s(_ v: String?) -> JSON { .opt(v.map(JSON.string)) }
        // libvirt's members only for a libvirt domain (snapshots of other peers are as before).
        let libvirt: [(String, JSON)] = q.libvirtState == nil && q.libvirtFacts == nil ? []
            : [(Key.libvirtState, s(q.libvirtState)), (Key.libvirtFacts, s(q.libvirtFacts))]
        return .object(d.members(inSnapshot: true) + [
            (Key.qemuVersion, s(q.version)), (Key.runState, s(q.runState)), (Key.accelerator, s(q.accelerator)),
            (Key.machine, s(q.machine)), (Key.arch, s(q.arch)),
        ] + libvirt)
    }

    public static func memslot(_ m: Memslot, slotKnown: Bool, privatePages: UInt64, sharedPages: UInt64, region: String?,
                               regionOffset: UInt64?, device: String?) -> JSON {
        .object(m.members(slotKnown: slotKnown) + [
            (Key.privatePages, .u(privatePages)), (Key.sharedPages, .u(sharedPages)), (Key.region, .opt(region.map(JSON.string))),
            (Key.regionOffset, .opt(regionOffset.map(JSON.u))), (Key.device, .opt(device.map(JSON.string))),
        ])
    }

    public static func faults(_ records: [FaultRecord], limit: Int, received: UInt64, dropped: UInt64, eventsDropped: UInt64) -> JSON {
        .object([(FaultsKey.records, .array(records.map(\.json))), (Key.limit, .i(limit)), (Key.received, .u(received)),
                 (FaultsKey.dropped, .u(dropped)), (Key.eventsDropped, .u(eventsDropped))])
    }

    static func pairs(_ p: [(String, UInt64)]) -> JSON { .object(p.map { ($0.0, .u($0.1)) }) }

    public static func vcpu(index: Int, threadID: Int, state: Open<VCPURunState>, lastExit: String, exits: UInt64,
                            exitCounts: [(String, UInt64)], registers: [(String, UInt64)], segments: [(String, UInt64)],
                            controlRegisters: [(String, UInt64)], stats: [(String, UInt64)], guest: [(String, UInt64)]) -> JSON {
        .object([
            (VCPUKey.index, .i(index)), (VCPUKey.threadID, .i(threadID)), (VCPUKey.state, .e(state)),
            (VCPUKey.lastExit, .string(lastExit)), (Key.exits, .u(exits)), (VCPUKey.exitCounts, pairs(exitCounts)),
            (VCPUKey.regs, pairs(registers)), (Key.segments, pairs(segments)), (Key.controlRegisters, pairs(controlRegisters)),
            (VCPUKey.stats, pairs(stats)), (VCPUKey.guest, pairs(guest)),
        ])
    }

    public static func document(takenAtWallNs: UInt64, origin: JSON, peer: String?, vm: JSON, memslots: [JSON], attributes: JSON,
                                faults: JSON, vcpus: [JSON], vmStats: [(String, UInt64)], unavailable: [(String, String)]) -> JSON {
        .object([
            (Key.format, .string(format)), (Key.version, .i(version)), (Key.takenAtNs, .u(takenAtWallNs)),
            (Key.origin, origin), (Key.peer, .opt(peer.map(JSON.string))), (Key.vm, vm), (Key.memslots, .array(memslots)),
            (Key.attributes, attributes), (Key.faults, faults), (Key.vcpus, .array(vcpus)), (Key.vmStats, pairs(vmStats)),
            (Key.unavailable, .object(unavailable.map { ($0.0, .string($0.1)) })),
        ])
    }
}

extension SnapshotFormat {
    /// A snapshot document read back: a stock QEMU's recording holds its views as these (docs/recording.md), and the
    /// replay turns them into the model again. Fault records are not read here (the recording carries them as events).
    public struct Document: Sendable {
        public struct Slot: Sendable {
            public var memslot: Memslot
            public var slotKnown: Bool
            public var privatePages: UInt64, sharedPages: UInt64
            public var region: String?, regionOffset: UInt64?, device: String?
        }
        public struct VCPU: Sendable {
            public var index: Int, threadID: Int
            public var state: Open<VCPURunState>
            public var lastExit: String
            public var exits: UInt64
            public var exitCounts: [(String, UInt64)], registers: [(String, UInt64)], segments: [(String, UInt64)]
            public var controlRegisters: [(String, UInt64)], stats: [(String, UInt64)], guest: [(String, UInt64)]
        }
        public var vm: VMDescription
        public var qemu: QEMUFacts
        public var memslots: [Slot]
        /// nil where the document's `attributes` is null (the peer has no map).
        public var attributes: AttributeRuns?
        public var vcpus: [VCPU]
        public var vmStats: [(String, UInt64)]
        /// Pane name → why the peer does not offer it.
        public var unavailable: [(String, String)]

        static func pairs(_ j: JSON?) -> [(String, UInt64)] { (j?.objectMembers ?? []).compactMap { k, v in v.uint64Value.map { (k, $0) } } }

        public init(json j: JSON) {
            let v = j[Key.vm] ?? .null
            vm = VMDescription(json: v)
            func s(_ key: String) -> String? { v[key]?.stringValue }
            qemu = QEMUFacts(version: s(Key.qemuVersion), runState: s(Key.runState), accelerator: s(Key.accelerator),
                             machine: s(Key.machine), arch: s(Key.arch))
            memslots = (j[Key.memslots]?.arrayValue ?? []).compactMap { m in
                // QEMU's ranges have no KVM slot number (null): read as slot 0, not known.
                let known = m[Memslot.Key.slot]?.intValue != nil
                let members = (m.objectMembers ?? []).map { $0.0 == Memslot.Key.slot && !known ? ($0.0, JSON.i(0)) : $0 }
                guard let slot = Memslot(json: .object(members)) else { return nil }
                return Slot(memslot: slot, slotKnown: known, privatePages: m[Key.privatePages]?.uint64Value ?? 0,
                            sharedPages: m[Key.sharedPages]?.uint64Value ?? 0, region: m[Key.region]?.stringValue,
                            regionOffset: m[Key.regionOffset]?.uint64Value, device: m[Key.device]?.stringValue)
            }
            if let a = j[Key.attributes], case .object = a { attributes = AttributeRuns(json: a) } else { attributes = nil }
            vcpus = (j[Key.vcpus]?.arrayValue ?? []).compactMap { c in
                guard let index = c[VCPUKey.index]?.intValue else { return nil }
                return VCPU(index: index, threadID: c[VCPUKey.threadID]?.intValue ?? 0, state: c[VCPUKey.state]?.open() ?? .unknown("?"),
                            lastExit: c[VCPUKey.lastExit]?.stringValue ?? "-", exits: c[Key.exits]?.uint64Value ?? 0,
                            exitCounts: Self.pairs(c[VCPUKey.exitCounts]), registers: Self.pairs(c[VCPUKey.regs]),
                            segments: Self.pairs(c[Key.segments]), controlRegisters: Self.pairs(c[Key.controlRegisters]),
                            stats: Self.pairs(c[VCPUKey.stats]), guest: Self.pairs(c[VCPUKey.guest]))
            }
            vmStats = Self.pairs(j[Key.vmStats])
            unavailable = (j[Key.unavailable]?.objectMembers ?? []).compactMap { k, v in v.stringValue.map { (k, $0) } }
        }
    }
}
