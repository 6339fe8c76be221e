import KVM
import Schema
import Testing
@testable import HostTracing

/// The per-CPU buffers are read one after another: a thread that moved between CPUs had its events out of order, and
/// the lab paired a conversion with a KVM_RUN entry from before its exit. A read is merged by timestamp, stably.
struct TimeOrderTests {
    @Test func eventsOfTwoCPUsComeOutInTimeOrderWithTheirRawRecords() {
        func e(_ cpu: Int32, _ t: UInt64) -> TraceEvent { TraceEvent(tid: 7, cpu: cpu, timeNs: t, kind: .other(id: Int(t))) }
        let events = [e(0, 10), e(0, 30), e(0, 30), e(1, 20), e(1, 40)]
        let raw = events.map { RawTraceRecord(cpu: $0.cpu, timeNs: $0.timeNs, data: [UInt8(truncatingIfNeeded: $0.timeNs)]) }
        let (sorted, sortedRaw) = TraceSession.inTimeOrder(events, raw: raw)
        #expect(sorted.map(\.timeNs) == [10, 20, 30, 30, 40])
        #expect(sorted.map(\.cpu) == [0, 1, 0, 0, 1])
        #expect(sortedRaw?.map(\.timeNs) == [10, 20, 30, 30, 40])
        #expect(TraceSession.inTimeOrder([e(0, 1), e(1, 2)], raw: nil).0.map(\.timeNs) == [1, 2])
    }

    /// The runs a read gives (one per CPU's buffer, or more where a buffer wrapped) are merged: the same order as a
    /// stable sort by time, for any number of runs, equal times and all.
    @Test func mergingRunsOrdersAsAStableSortDoes() {
        var rng = SystemRandomNumberGenerator()
        for trial in 0..<300 {
            let runs = trial % 7 + 1
            var events: [TraceEvent] = []
            for cpu in 0..<runs {
                var t = UInt64.random(in: 0..<20, using: &rng)
                for _ in 0..<Int.random(in: 0..<40, using: &rng) {
                    t += UInt64.random(in: 0..<3, using: &rng)   // repeats within a run too
                    events.append(TraceEvent(tid: 7, cpu: Int32(cpu), timeNs: t, kind: .other(id: events.count)))
                }
            }
            let expected = events.indices.sorted { (events[$0].timeNs, $0) < (events[$1].timeNs, $1) }
            let got = TraceSession.timeOrder(events) ?? Array(events.indices)
            #expect(got == expected, "\(runs) runs: \(events.map(\.timeNs))")
            if got != expected { return }
        }
    }

    /// Seen in a full run: the host's to-shared conversion of a page, traced on one CPU, came a read after the
    /// vCPU's newer to-private of it (read from the other CPU's buffer), and the traced map ended shared, which the
    /// VMM's map was not. An event is given out only once no read can bring an older one.
    @Test func eventsComeOutInTimeOrderAcrossReads() {
        let ms: UInt64 = 1_000_000
        func e(_ cpu: Int32, _ t: UInt64) -> TraceEvent { TraceEvent(tid: cpu, cpu: cpu, timeNs: t * ms, kind: .other(id: Int(t))) }
        var release = TimeOrderedRelease()
        var out: [TraceEvent] = []
        // The first read begins at 100 ms: CPU 0's buffer is read (empty), then CPU 1's, which by then holds an
        // event from 101 ms, and one from 50 ms.
        out += release.take([e(1, 50), e(1, 101)], raw: nil, readStartedNs: 100 * ms, final: false).0
        #expect(out.map(\.timeNs) == [50 * ms], "101 ms is newer than the read's start: CPU 0 may still have older ones")
        #expect(release.held.count == 1)
        // CPU 0's event from 99 ms (written as CPU 0 was read) comes in the second read, with newer ones.
        out += release.take([e(0, 99), e(0, 160), e(1, 170)], raw: nil, readStartedNs: 200 * ms, final: false).0
        #expect(out.map(\.timeNs) == [50, 99, 101, 160, 170].map { $0 * ms })
        // What is within the hold-back of the read's start waits; a final read gives out everything, in order.
        out += release.take([e(1, 199), e(0, 198)], raw: nil, readStartedNs: 199 * ms + 1, final: false).0
        #expect(out.count == 5)
        out += release.take([], raw: nil, readStartedNs: 300 * ms, final: true).0
        #expect(out.map(\.timeNs) == [50, 99, 101, 160, 170, 198, 199].map { $0 * ms })
        #expect(release.held.isEmpty)
    }

    /// An event written later than the hold-back allows (the L1 vCPU writing it descheduled by its host, in the
    /// lab) still comes out, after newer ones, and is counted: `TracedAttributes` orders conversions itself.
    @Test func anEventLaterThanTheHoldBackIsGivenOutAndCounted() {
        let ms: UInt64 = 1_000_000
        func e(_ t: UInt64) -> TraceEvent { TraceEvent(tid: 1, cpu: 0, timeNs: t * ms, kind: .other(id: Int(t))) }
        var release = TimeOrderedRelease()
        let first = release.take([e(50), e(90)], raw: nil, readStartedNs: 100 * ms, final: false).0
        #expect(first.map(\.timeNs) == [50 * ms, 90 * ms] && release.late == 0)
        let second = release.take([e(60), e(150)], raw: nil, readStartedNs: 200 * ms, final: false).0
        #expect(second.map(\.timeNs) == [60 * ms, 150 * ms] && release.late == 1)
        // It came 30 ms after the newest given out before it: from now on a read holds back 60 ms, so an event as
        // late again waits for its elders instead of overtaking them.
        #expect(release.worstLatenessNs == 30 * ms && release.currentHoldBackNs == 60 * ms)
        let third = release.take([e(210), e(260)], raw: nil, readStartedNs: 300 * ms, final: false).0
        #expect(third.map(\.timeNs) == [210 * ms], "260 ms is within 60 ms of the read's start")
        let fourth = release.take([e(250), e(330)], raw: nil, readStartedNs: 400 * ms, final: false).0
        #expect(fourth.map(\.timeNs) == [250 * ms, 260 * ms, 330 * ms] && release.late == 1, "the late 250 ms waited its turn")
    }

    @Test func rawRecordsAreHeldWithTheirEventsAndAnotherClockHoldsNothing() {
        func e(_ t: UInt64) -> TraceEvent { TraceEvent(tid: 1, cpu: 0, timeNs: t, kind: .other(id: 0)) }
        func r(_ t: UInt64) -> RawTraceRecord { RawTraceRecord(cpu: 0, timeNs: t, data: [UInt8(t % 256)]) }
        var release = TimeOrderedRelease()
        let now: UInt64 = 10_000_000
        let first = release.take([e(now - 1), e(1)], raw: [r(now - 1), r(1)], readStartedNs: now, final: false)
        #expect(first.0.map(\.timeNs) == [1] && first.1?.map(\.timeNs) == [1])
        let second = release.take([e(now + 5)], raw: [r(now + 5)], readStartedNs: nil, final: false)
        #expect(second.0.map(\.timeNs) == [now - 1, now + 5] && second.1?.map(\.timeNs) == [now - 1, now + 5])
    }
}
