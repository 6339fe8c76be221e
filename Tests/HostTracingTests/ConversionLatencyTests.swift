import KVM
import Schema
import Testing
@testable import HostTracing

/// A conversion's steps as the trace times them (issue 29), on synthetic event sequences with known times: a vCPU
/// thread's exit, its KVM_SET_MEMORY_ATTRIBUTES, the ioctl's return and its next KVM_RUN.
@Suite struct ConversionLatencyTests {
    static let setAttributes = UInt64(KVMIoctl.setMemoryAttributes.value)
    static let run = UInt64(KVMIoctl.run.value)

    var map = TracedAttributes(complete: true)
    var pairing = ConversionLatencyPairing()
    var out: [ConversionTiming] = []

    mutating func feed(_ tid: Int32, _ at: UInt64, _ kind: TraceEvent.Kind) {
        let e = TraceEvent(tid: tid, cpu: 0, timeNs: at, kind: kind)
        out += pairing.apply(e, completed: map.apply(e))
    }

    /// enter at `at`, tracepoint 1 µs later, return after `convertNs`.
    mutating func convert(_ tid: Int32, at: UInt64, convertNs: UInt64, _ gfns: Range<UInt64>, ret: Int64 = 0) {
        feed(tid, at, .ioctlEnter(fd: 5, cmd: Self.setAttributes))
        feed(tid, at + 1000, .setMemoryAttributes(startGFN: gfns.lowerBound, endGFN: gfns.upperBound, attributes: 8))
        feed(tid, at + convertNs, .ioctlExit(ret: ret))
    }

    @Test mutating func aVCPUsOwnConversionHasAllThreeStepsInOrder() throws {
        feed(7, 1_000_000, .userspaceExit(reason: .memoryFault, errno: -14))
        feed(7, 1_000_500, .ioctlExit(ret: -14))                       // KVM_RUN returning -EFAULT
        convert(7, at: 1_020_000, convertNs: 40_000, 0x10..<0x11)
        #expect(out.isEmpty, "timed before the vCPU re-entered: \(out)")
        feed(8, 1_061_000, .ioctlEnter(fd: 9, cmd: Self.run))          // another vCPU's entry: not this one's
        #expect(out.isEmpty)
        feed(7, 1_065_000, .ioctlEnter(fd: 9, cmd: Self.run))
        let t = try #require(out.first)
        #expect(out.count == 1)
        #expect(t.exitReason == .memoryFault && t.exitNs == 1_000_000 && t.reenteredNs == 1_065_000)
        #expect(t.duration(.request) == 20_000 && t.duration(.convert) == 40_000 && t.duration(.reentry) == 5_000)
        #expect(t.totalNs == 65_000)
        #expect(t.conversion.startGFN == 0x10 && t.conversion.accepted)
    }

    @Test mutating func anotherThreadsConversionHasOnlyItsConvertStep() throws {
        feed(7, 1_000, .userspaceExit(reason: .mmio, errno: 0))
        convert(3, at: 50_000, convertNs: 30_000, 0x20..<0x40)        // the control thread: no exit of its own
        let t = try #require(out.first)
        #expect(t.exitNs == nil && t.duration(.request) == nil && t.duration(.reentry) == nil && t.duration(.convert) == 30_000)
    }

    @Test mutating func anExitAfterAnUntracedEntryGivesTheWaitingConversionsWithoutReentry() throws {
        feed(7, 1_000, .userspaceExit(reason: .io, errno: 0))
        convert(7, at: 5_000, convertNs: 10_000, 0x30..<0x31)
        convert(7, at: 20_000, convertNs: 10_000, 0x31..<0x32)         // two before the thread goes back in
        feed(7, 90_000, .userspaceExit(reason: .io, errno: 0))          // no KVM_RUN entry seen (filtered, or lost)
        #expect(out.count == 2 && out.allSatisfy { $0.reenteredNs == nil && $0.exitReason == .io && $0.duration(.request) != nil })
        #expect(out.map(\.conversion.startGFN) == [0x30, 0x31])
    }

    @Test mutating func outOfOrderTimesGiveNoDurationRatherThanATrap() throws {
        feed(7, 9_000_000, .userspaceExit(reason: .memoryFault, errno: -14))
        convert(7, at: 1_000, convertNs: 500, 0x1..<0x2)                // times from a hostile raw file
        feed(7, 10, .ioctlEnter(fd: 9, cmd: Self.run))
        let t = try #require(out.first)
        #expect(t.duration(.request) == nil && t.duration(.reentry) == nil && t.totalNs == nil && t.duration(.convert) == 500)
    }

    @Test mutating func waitingConversionsAreBoundedPerThread() {
        feed(7, 0, .userspaceExit(reason: .memoryFault, errno: -14))
        for i in 0..<UInt64(ConversionLatencyPairing.perThreadLimit + 10) { convert(7, at: 1000 + i * 100_000, convertNs: 1000, i..<(i + 1)) }
        #expect(out.count == 10, "the oldest beyond the bound are given up, without re-entry")
    }

    /// Past `threadLimit` threads all are let go, and the conversions waiting on them are given out (without their
    /// re-entry) rather than lost.
    @Test mutating func threadsAreBoundedAndTheirWaitingConversionsGivenOut() {
        let n = Int32(ConversionLatencyPairing.threadLimit)
        for tid in 1...n {
            feed(tid, 10, .userspaceExit(reason: .memoryFault, errno: -14))
            convert(tid, at: 1000, convertNs: 100, UInt64(tid)..<UInt64(tid + 1))
        }
        #expect(out.isEmpty, "each waits for its thread's KVM_RUN")
        feed(n + 1, 2000, .userspaceExit(reason: .io, errno: 0))
        #expect(out.count == Int(n) && out.allSatisfy { $0.reenteredNs == nil && $0.exitNs == 10 })
        feed(1, 3000, .ioctlEnter(fd: 9, cmd: Self.run))
        #expect(out.count == Int(n), "thread 1 was let go with the others")
    }

    @Test func stepTimesAreTheStepsByName() {
        let t: ConversionStepTimes = [.request: 20_000, .reentry: 700_000]
        #expect(t[.request] == 20_000 && t[.convert] == nil && t[.reentry] == 700_000)
        #expect(t.map(\.step) == [.request, .reentry], "in the steps' order, the untimed left out")
        #expect(t.dictionary == [.request: 20_000, .reentry: 700_000] && ConversionStepTimes(t.dictionary) == t)
        var c = TracedAttributes.Conversion(tid: 1, enteredNs: 100, tracedNs: 150, returnedNs: 400)
        c.errno = nil
        let timing = ConversionTiming(conversion: c, exitReason: .io, exitNs: 40, reenteredNs: 1000)
        #expect(timing.stepTimes == [.request: 60, .convert: 300, .reentry: 600] && timing.steps == timing.stepTimes.dictionary)
    }

    @Test func theHistogramBoundsItsQuantilesByBucketEdges() {
        var h = LatencyHistogram()
        var c = TracedAttributes.Conversion(tid: 1, enteredNs: 0, tracedNs: 0, returnedNs: 0)
        for ns: UInt64 in [1_000, 1_500, 3_000, 100_000] {
            c.returnedNs = ns
            h.add(ConversionTiming(conversion: c).steps)
        }
        #expect(h.total(.convert) == 4 && h.total(.request) == 0)
        #expect(h.quantile(.convert, 0.5) == 2048, "1000 and 1500 lie in [1024, 2048)")
        #expect(h.quantile(.convert, 0.99) == 131_072)
        #expect(h.quantile(.request, 0.5) == nil)
        c.returnedNs = .max
        h.add(ConversionTiming(conversion: c).steps)
        #expect(h.quantile(.convert, 1) == 1 << 40, "the last bucket holds everything longer")
    }
}

extension ConversionLatencyTests {
    /// Seen in the lab: a thread's events from another CPU's buffer arrive a read later. An exit newer than the
    /// conversion is not its exit, and a KVM_RUN entry older than its return is not its re-entry.
    @Test mutating func eventsArrivingOutOfOrderAreNotPairedAgainstTime() throws {
        feed(7, 1_000, .userspaceExit(reason: .memoryFault, errno: -14))
        feed(7, 90_000, .userspaceExit(reason: .io, errno: 0))            // from a later read of another CPU... first
        convert(7, at: 5_000, convertNs: 10_000, 0x40..<0x41)               // the conversion after the first exit
        #expect(out.count == 1 && out[0].exitNs == nil, "the exit at 90 µs came after the conversion began: \(out)")
        out = []
        feed(8, 1_000, .userspaceExit(reason: .memoryFault, errno: -14))
        convert(8, at: 5_000, convertNs: 10_000, 0x50..<0x51)
        feed(8, 3_000, .ioctlEnter(fd: 9, cmd: Self.run))                   // an entry before the return: not its re-entry
        #expect(out.isEmpty)
        feed(8, 20_000, .ioctlEnter(fd: 9, cmd: Self.run))
        let t = try #require(out.first)
        #expect(t.exitNs == 1_000 && t.reenteredNs == 20_000 && t.duration(.request) == 4_000 && t.duration(.reentry) == 5_000)
    }
}

