/// When a tracer reads next. Every read costs the tracer a pass over the per-CPU buffers (files opened, pages
/// copied, records decoded), and that CPU is the traced VM's where CPUs are few: in the lab, whose two emulated CPUs
/// are the guest's vCPU threads', `vmscope trace` read again at once whenever a read found anything (a guest that
/// exits all the time kept it reading without pause) and took half of the guest's progress. So a tracer reads at
/// most every `longestNs` while the stream is light, and sooner only as the stream grows towards what fills the
/// kernel's buffer between two reads (whose overflow is counted as missed, never silent).
public struct TracePacer: Sendable {
    /// The interval while few events come, and the shortest one.
    public static let longestNs: UInt64 = 100_000_000
    public static let shortestNs: UInt64 = 1_000_000
    /// Events a read may bring before the next read comes sooner: an eighth of what one CPU's buffer holds (at
    /// 64 bytes a record, above the events' sizes), so a stream twice as fast still leaves the buffer under a quarter
    /// full.
    public let busyEvents: Int
    public private(set) var intervalNs: UInt64 = Self.longestNs

    public init(bufferKiB: Int = TraceSession.defaultBufferKiB) {
        busyEvents = max(64, bufferKiB * 1024 / 64 / 8)
    }

    /// The wait before the next read, after one that brought `events`.
    public mutating func next(afterReading events: Int) -> UInt64 {
        if events >= busyEvents {
            intervalNs = max(Self.shortestNs, intervalNs / 2)
        } else if events < busyEvents / 4 {
            intervalNs = min(Self.longestNs, intervalNs * 2)
        }
        return intervalNs
    }
}
