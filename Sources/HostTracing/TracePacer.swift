/// When a tracer reads next. Every read costs the tracer a pass over the per-CPU buffers (files opened, pages
/// copied, records decoded), and that CPU is the traced VM's where CPUs are few: in the lab, whose two emulated CPUs
/// are the guest's vCPU threads', `vmscope trace` read again at once whenever a read found anything (a guest that
/// exits all the time kept it reading without pause) and took half of the guest's progress. So a tracer reads at
/// most every `longestNs` while the stream is light, and sooner only as the stream grows towards what fills the
/// kernel's buffer between two reads (whose overflow is counted as missed, never silent).
///
/// Each read also costs a fixed part, whatever it brings (waking, the system calls, the CPU's caches and, in the lab,
/// the emulated TLB refilled): read every second instead of every 100 ms, the paired tracer took 0.06 of a lab CPU
/// instead of 0.085 for the same stream (four windows each, 2026-12-07). So `vmscope trace`, whose records wait in a
/// file or a pipe, reads every `traceLongestNs(bufferKiB:)`; the inspector's views, which a person watches, every
/// `longestNs`.
public struct TracePacer: Sendable {
    /// The interval while few events come (the views'), and the shortest one.
    public static let longestNs: UInt64 = 100_000_000
    public static let shortestNs: UInt64 = 1_000_000
    /// `vmscope trace`'s interval while few events come, with the default buffer (its `--read-interval`'s default).
    public static let traceLongestNs: UInt64 = 500_000_000
    /// What `--read-interval` may ask, ms.
    public static let readIntervalMsRange: ClosedRange<UInt64> = 1...10_000

    /// `vmscope trace`'s interval while few events come where none is asked for: `traceLongestNs` with the default
    /// buffer or a larger one, shorter with a smaller one (in proportion, down to `longestNs`), so what a sudden burst
    /// may bring before the pacer hurries stays in proportion to the room for it (4 MiB, at 64 bytes an event: about
    /// 130,000 events a second on one CPU for the first half second).
    public static func traceLongestNs(bufferKiB: Int) -> UInt64 {
        max(longestNs, min(traceLongestNs, traceLongestNs * UInt64(max(bufferKiB, 0)) / UInt64(TraceSession.defaultBufferKiB)))
    }
    /// Events a read may bring before the next read comes sooner: an eighth of what one CPU's buffer holds (at
    /// 64 bytes a record, above the events' sizes), so a stream twice as fast still leaves the buffer under a quarter
    /// full.
    public let busyEvents: Int
    /// The interval while few events come: `longestNs` or what the tracer asked.
    public let longest: UInt64
    public private(set) var intervalNs: UInt64

    public init(bufferKiB: Int = TraceSession.defaultBufferKiB, longestNs: UInt64 = Self.longestNs) {
        busyEvents = max(64, bufferKiB * 1024 / 64 / 8)
        longest = max(Self.shortestNs, longestNs)
        intervalNs = longest
    }

    /// The wait before the next read, after one that brought `events`.
    public mutating func next(afterReading events: Int) -> UInt64 {
        if events >= busyEvents {
            intervalNs = max(Self.shortestNs, intervalNs / 2)
        } else if events < busyEvents / 4 {
            intervalNs = min(longest, intervalNs * 2)
        }
        return intervalNs
    }
}
