import KVM
import Schema
import Testing
@testable import HostTracing

/// A tracer reads every 100 ms while few events come, sooner as the stream nears what fills the kernel's buffer
/// between reads, and slows down again after.
struct TracePacerTests {
    @Test func aLightStreamIsReadSeldomAndAHeavyOneSooner() {
        var pacer = TracePacer(bufferKiB: 4096)
        #expect(pacer.busyEvents == 8192)
        for _ in 0..<10 { #expect(pacer.next(afterReading: 50) == TracePacer.longestNs) }
        var last = TracePacer.longestNs
        for _ in 0..<20 {
            let next = pacer.next(afterReading: 20_000)
            #expect(next <= last && next >= TracePacer.shortestNs)
            last = next
        }
        #expect(last == TracePacer.shortestNs)
        // Between a quarter and all of busyEvents: kept; fewer: slower again, up to the longest.
        #expect(pacer.next(afterReading: 4096) == last)
        for _ in 0..<20 { last = pacer.next(afterReading: 0) }
        #expect(last == TracePacer.longestNs)
    }

    /// `vmscope trace` reads every 500 ms with the default buffer, in proportion with a smaller one down to the views'
    /// 100 ms (what a burst may bring before the pacer hurries stays within the room for it); asked, what was asked.
    @Test func traceReadsSeldomerWhereItsBufferHasRoom() {
        #expect(TracePacer.traceLongestNs(bufferKiB: TraceSession.defaultBufferKiB) == 500_000_000)
        #expect(TracePacer.traceLongestNs(bufferKiB: TraceSession.defaultBufferKiB * 4) == 500_000_000)
        #expect(TracePacer.traceLongestNs(bufferKiB: 2048) == 250_000_000)
        #expect(TracePacer.traceLongestNs(bufferKiB: 256) == TracePacer.longestNs)
        #expect(TracePacer.traceLongestNs(bufferKiB: TraceSession.bufferKiBRange.lowerBound) == TracePacer.longestNs)
        var pacer = TracePacer(bufferKiB: 4096, longestNs: 2_000_000_000)
        #expect(pacer.next(afterReading: 0) == 2_000_000_000)
        var last: UInt64 = 0
        for _ in 0..<40 { last = pacer.next(afterReading: 20_000) }
        #expect(last == TracePacer.shortestNs)
        for _ in 0..<40 { last = pacer.next(afterReading: 0) }
        #expect(last == 2_000_000_000)
    }
}
