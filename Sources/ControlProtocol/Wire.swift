/// Protocol member names that more than one module reads or writes (docs/control-protocol.md), each spelled only
/// here; the server, the client's decoders, the inspector and the snapshot writer name them through these. A start
/// of the one schema issue 16 asks for: the other members are still spelled where they are used.
public enum Wire {
    /// Fault record: CLOCK_MONOTONIC of the fault, ns.
    public static let timeNs: StaticString = "time-ns"
    /// `query-vm`: the shared-alias GPA bit.
    public static let sharedAlias: StaticString = "shared-alias"
    /// `query-vm`: the VMM's fault policy.
    public static let faultPolicy: StaticString = "fault-policy"
    /// `query-memory-attributes`: private bytes in the range.
    public static let privateBytes: StaticString = "private-bytes"
    /// `set-memory-attributes` reply: how long the conversion took, ns.
    public static let durationNs: StaticString = "duration-ns"
}

extension StaticString {
    /// The name as a `String`, for JSON members.
    public var name: String { description }
}
