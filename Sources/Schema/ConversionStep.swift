/// The steps of a conversion a trace times on the thread that made it (issue 29; `trace`'s records, the inspector's
/// fault rows and histogram, `vmscope_conversion_latency_seconds{source="trace",step}`).
public enum ConversionStep: String, SchemaEnum {
    /// From the exit to userspace that asked for it (a memory fault, the guest's port or hypercall) to the VMM's
    /// `KVM_SET_MEMORY_ATTRIBUTES` on the same thread: the VMM deciding.
    case request
    /// The `KVM_SET_MEMORY_ATTRIBUTES` ioctl, entry to return: the kernel converting. A lower bound of the VMM's own
    /// conversion time, which also re-lays memslots and discards the side given up.
    case convert
    /// From the ioctl's return to the thread's next `KVM_RUN`: the VMM finishing (memslots, discard) and re-entering.
    case reentry = "re-entry"
}

/// Durations in log2 buckets of nanoseconds, per step: what the inspector draws as a histogram and the exporter
/// observes. Fixed size whatever it is fed.
public struct LatencyHistogram: Sendable, Equatable {
    /// Bucket i counts durations in [2^i, 2^(i+1)) ns (bucket 0 also holds 0); the last holds everything longer.
    public static let buckets = 40
    public private(set) var counts: [ConversionStep: [UInt64]] = [:]

    public init() {}

    public mutating func add(_ steps: [ConversionStep: UInt64]) {
        for (step, ns) in steps { counts[step, default: Array(repeating: 0, count: Self.buckets)][Self.bucket(ns)] &+= 1 }
    }

    static func bucket(_ ns: UInt64) -> Int { ns == 0 ? 0 : min(Self.buckets - 1, 63 - ns.leadingZeroBitCount) }

    public func total(_ step: ConversionStep) -> UInt64 { counts[step]?.reduce(0, &+) ?? 0 }

    /// The upper edge (ns) of the bucket holding the `q` quantile (0...1): a bound, not an exact value.
    public func quantile(_ step: ConversionStep, _ q: Double) -> UInt64? {
        guard let c = counts[step] else { return nil }
        let n = c.reduce(0, &+)
        guard n > 0 else { return nil }
        let rank = UInt64((Double(n) * min(max(q, 0), 1)).rounded(.up))
        var seen: UInt64 = 0
        for (i, k) in c.enumerated() {
            seen &+= k
            if seen >= max(rank, 1) { return i >= 63 ? .max : (UInt64(1) << UInt64(i + 1)) }
        }
        return nil
    }
}

/// One conversion's timed steps: each step's duration in ns, or nil where the trace lacks an end. Three fields, not a
/// dictionary: `top` and the exporter keep one for each traced conversion, and building a `[ConversionStep: UInt64]`
/// for each (an allocation and a hash of each step's name) was a sixth of their cost an event on a conversion-heavy
/// stream (callgrind, `vmscope-bench --callgrind-decode top`).
public struct ConversionStepTimes: Sendable, Equatable, Sequence, ExpressibleByDictionaryLiteral {
    private var request: UInt64?
    private var convert: UInt64?
    private var reentry: UInt64?

    public init() {}
    public init(dictionaryLiteral elements: (ConversionStep, UInt64)...) {
        for (step, ns) in elements { self[step] = ns }
    }
    public init(_ steps: [ConversionStep: UInt64]) {
        for (step, ns) in steps { self[step] = ns }
    }

    public subscript(step: ConversionStep) -> UInt64? {
        get {
            switch step {
            case .request: request
            case .convert: convert
            case .reentry: reentry
            }
        }
        set {
            switch step {
            case .request: request = newValue
            case .convert: convert = newValue
            case .reentry: reentry = newValue
            }
        }
    }

    /// The timed steps, in `ConversionStep`'s order.
    public func makeIterator() -> some IteratorProtocol<(step: ConversionStep, ns: UInt64)> {
        ConversionStep.allCases.compactMap { s in self[s].map { (step: s, ns: $0) } }.makeIterator()
    }

    /// The same as a dictionary (what the inspector's views take).
    public var dictionary: [ConversionStep: UInt64] {
        Dictionary(uniqueKeysWithValues: map { ($0.step, $0.ns) })
    }
}
