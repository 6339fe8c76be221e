/// `query-metrics`: the VMM's counters and gauges for an exporter (`vmscope vmm --metrics`, `vmscope top --metrics`).
/// Counters are cumulative since the VMM started; conversion times are handed out once each, by sequence number.
public struct QueryMetrics: SchemaCommand {
    public static let name = CommandName.queryMetrics
    /// Conversion times numbered after this one are returned (nil: none, only the newest number).
    public var conversionTimesAfter: UInt64?
    public init(conversionTimesAfter: UInt64? = nil) { self.conversionTimesAfter = conversionTimesAfter }
    public var arguments: JSON? { conversionTimesAfter.map { .object([(Self.afterMember, .u($0))]) } }
    static let afterMember = "conversion-times-after"
    public init(_ a: inout Arguments) throws(CommandError) {
        conversionTimesAfter = try a.optionalUInt64(Self.afterMember)
        try a.finish()
    }
    public static func reply(_ j: JSON) -> VMMetrics { VMMetrics(json: j) }
}

/// The reply of `query-metrics`.
public struct VMMetrics: SchemaValue, Equatable {
    public struct VCPU: Sendable, Equatable {
        public var index: Int
        public var state: Open<VCPURunState>
        /// Exits to the VMM by KVM exit reason, as `query-vcpus`' `exit-counts`.
        public var exits: [(String, UInt64)]
        /// KVM's binary statistics of the vCPU (cumulative ones), as `query-vcpus`' `stats`.
        public var stats: [(String, UInt64)]
        public init(index: Int, state: Open<VCPURunState>, exits: [(String, UInt64)], stats: [(String, UInt64)]) {
            self.index = index; self.state = state; self.exits = exits; self.stats = stats
        }
        public static func == (a: VCPU, b: VCPU) -> Bool {
            a.index == b.index && a.state == b.state && a.exits.elementsEqual(b.exits, by: ==) && a.stats.elementsEqual(b.stats, by: ==)
        }
    }

    /// Memory-fault exits (fault records with an exit), by who saw them and what the access wanted.
    public struct FaultExits: Sendable, Equatable, Hashable {
        public var source: Open<FaultSource>
        public var isPrivate: Bool
        public var count: UInt64
        public init(source: Open<FaultSource>, isPrivate: Bool, count: UInt64) { self.source = source; self.isPrivate = isPrivate; self.count = count }
    }

    /// Conversions asked for and done, by cause and direction (`private`: to private).
    public struct Conversions: Sendable, Equatable, Hashable {
        public var cause: Open<ConversionCause>
        public var toPrivate: Bool
        public var requested: UInt64
        public var done: UInt64
        public init(cause: Open<ConversionCause>, toPrivate: Bool, requested: UInt64, done: UInt64) {
            self.cause = cause; self.toPrivate = toPrivate; self.requested = requested; self.done = done
        }
    }

    /// How long conversions took, each once: those numbered after the asked-for one (at most the VMM's ring),
    /// the newest number, and how many of the asked-for ones the ring had already let go.
    public struct ConversionTimes: Sendable, Equatable {
        public var last: UInt64
        public var ns: [UInt64]
        public var dropped: UInt64
        public init(last: UInt64, ns: [UInt64], dropped: UInt64) { self.last = last; self.ns = ns; self.dropped = dropped }
    }

    public var vcpus: [VCPU]
    public var memoryFaultExits: [FaultExits]
    public var conversions: [Conversions]
    public var injections: [(Open<InjectionKind>, UInt64)]
    /// Fault records evicted from the VMM's ring before anyone read them.
    public var faultsDropped: UInt64
    public var privateBytes: UInt64
    public var sharedBytes: UInt64
    public var attributeRuns: UInt64
    public var memslots: UInt64
    public var conversionTimes: ConversionTimes

    public init(vcpus: [VCPU], memoryFaultExits: [FaultExits], conversions: [Conversions], injections: [(Open<InjectionKind>, UInt64)],
                faultsDropped: UInt64, privateBytes: UInt64, sharedBytes: UInt64, attributeRuns: UInt64, memslots: UInt64,
                conversionTimes: ConversionTimes) {
        self.vcpus = vcpus; self.memoryFaultExits = memoryFaultExits; self.conversions = conversions; self.injections = injections
        self.faultsDropped = faultsDropped; self.privateBytes = privateBytes; self.sharedBytes = sharedBytes
        self.attributeRuns = attributeRuns; self.memslots = memslots; self.conversionTimes = conversionTimes
    }

    public static func == (a: VMMetrics, b: VMMetrics) -> Bool {
        a.vcpus == b.vcpus && a.memoryFaultExits == b.memoryFaultExits && a.conversions == b.conversions
            && a.injections.elementsEqual(b.injections, by: ==) && a.faultsDropped == b.faultsDropped
            && a.privateBytes == b.privateBytes && a.sharedBytes == b.sharedBytes && a.attributeRuns == b.attributeRuns
            && a.memslots == b.memslots && a.conversionTimes == b.conversionTimes
    }

    /// The reply's own member names; those other replies have too come from where those replies spell them.
    private enum Key {
        static let vcpus = SnapshotKey.vcpus, index = VCPUKey.index, state = VCPUKey.state, exits = "exits", stats = VCPUKey.stats
        static let faultExits = "memory-fault-exits", source = FaultRecord.Member.source.name
        static let isPrivate = FaultRecord.Member.isPrivate.name, count = "count"
        static let conversions = "conversions", cause = "cause", requested = "requested", done = "done"
        static let injections = "injections", kind = "kind"
        static let faultsDropped = "faults-dropped", privateBytes = AttributesKey.privateBytes, sharedBytes = AttributesKey.sharedBytes
        static let attributeRuns = "attribute-runs", memslots = SnapshotKey.memslots
        static let times = "conversion-times", last = "last", ns = "ns", dropped = FaultsKey.dropped
    }

    private static func counts(_ j: JSON?) -> [(String, UInt64)] {
        (j?.objectMembers ?? []).compactMap { k, v in v.uint64Value.map { (k, $0) } }
    }
    private static func counts(_ c: [(String, UInt64)]) -> JSON { .object(c.map { ($0.0, .u($0.1)) }) }

    public init(json j: JSON) {
        vcpus = (j[Key.vcpus]?.arrayValue ?? []).compactMap { v in
            guard let index = v[Key.index]?.intValue else { return nil }
            return VCPU(index: index, state: v[Key.state]?.open() ?? .unknown(""), exits: Self.counts(v[Key.exits]),
                        stats: Self.counts(v[Key.stats]))
        }
        memoryFaultExits = (j[Key.faultExits]?.arrayValue ?? []).compactMap { e in
            guard let s: Open<FaultSource> = e[Key.source]?.open(), let p = e[Key.isPrivate]?.boolValue,
                  let n = e[Key.count]?.uint64Value else { return nil }
            return FaultExits(source: s, isPrivate: p, count: n)
        }
        conversions = (j[Key.conversions]?.arrayValue ?? []).compactMap { e in
            guard let c: Open<ConversionCause> = e[Key.cause]?.open(), let p = e[Key.isPrivate]?.boolValue else { return nil }
            return Conversions(cause: c, toPrivate: p, requested: e[Key.requested]?.uint64Value ?? 0, done: e[Key.done]?.uint64Value ?? 0)
        }
        injections = (j[Key.injections]?.arrayValue ?? []).compactMap { e in
            guard let k: Open<InjectionKind> = e[Key.kind]?.open(), let n = e[Key.count]?.uint64Value else { return nil }
            return (k, n)
        }
        faultsDropped = j[Key.faultsDropped]?.uint64Value ?? 0
        privateBytes = j[Key.privateBytes]?.uint64Value ?? 0
        sharedBytes = j[Key.sharedBytes]?.uint64Value ?? 0
        attributeRuns = j[Key.attributeRuns]?.uint64Value ?? 0
        memslots = j[Key.memslots]?.uint64Value ?? 0
        let t = j[Key.times]
        conversionTimes = ConversionTimes(last: t?[Key.last]?.uint64Value ?? 0,
                                          ns: (t?[Key.ns]?.arrayValue ?? []).compactMap(\.uint64Value),
                                          dropped: t?[Key.dropped]?.uint64Value ?? 0)
    }

    public var json: JSON {
        .object([
            (Key.vcpus, .array(vcpus.map { v in
                .object([(Key.index, .i(v.index)), (Key.state, .string(v.state.rawValue)), (Key.exits, Self.counts(v.exits)),
                         (Key.stats, Self.counts(v.stats))])
            })),
            (Key.faultExits, .array(memoryFaultExits.map {
                .object([(Key.source, .string($0.source.rawValue)), (Key.isPrivate, .bool($0.isPrivate)), (Key.count, .u($0.count))])
            })),
            (Key.conversions, .array(conversions.map {
                .object([(Key.cause, .string($0.cause.rawValue)), (Key.isPrivate, .bool($0.toPrivate)),
                         (Key.requested, .u($0.requested)), (Key.done, .u($0.done))])
            })),
            (Key.injections, .array(injections.map { .object([(Key.kind, .string($0.0.rawValue)), (Key.count, .u($0.1))]) })),
            (Key.faultsDropped, .u(faultsDropped)), (Key.privateBytes, .u(privateBytes)), (Key.sharedBytes, .u(sharedBytes)),
            (Key.attributeRuns, .u(attributeRuns)), (Key.memslots, .u(memslots)),
            (Key.times, .object([(Key.last, .u(conversionTimes.last)), (Key.ns, .array(conversionTimes.ns.map(JSON.u))),
                                 (Key.dropped, .u(conversionTimes.dropped))])),
        ])
    }
}
