import Foundation

/// The host's two clocks, in ns: CLOCK_MONOTONIC (fault records' `time-ns`, event timing, recordings) and
/// CLOCK_REALTIME (event timestamps, snapshots). The one implementation every module uses.
public enum HostClock {
    public static func monotonicNs() -> UInt64 { read(CLOCK_MONOTONIC) }
    public static func wallNs() -> UInt64 { read(CLOCK_REALTIME) }
    private static func read(_ id: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(id, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
