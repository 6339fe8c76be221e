import KVM
import Testing
@testable import HostTracing

/// The traced private/shared map (issue 29) on synthetic event sequences: a conversion counts only once its
/// ioctl returned 0 on the same thread; refusals never change the map; pages nobody converted are unknown unless
/// the trace saw the VM from its start.
@Suite struct TracedAttributesTests {
    static let setAttributes = UInt64(KVMIoctl.setMemoryAttributes.value)
    var t: UInt64 = 0

    static func step(_ map: inout TracedAttributes, _ e: TraceEvent) -> TracedAttributes.Conversion? { map.apply(e) }

    mutating func event(_ tid: Int32, _ kind: TraceEvent.Kind) -> TraceEvent {
        t += 1000
        return TraceEvent(tid: tid, cpu: 0, timeNs: t, kind: kind)
    }

    /// enter, tracepoint, return `ret`, on thread `tid`.
    mutating func convert(_ map: inout TracedAttributes, tid: Int32 = 10, _ gfns: Range<UInt64>, toPrivate: Bool, ret: Int64 = 0) -> TracedAttributes.Conversion? {
        _ = map.apply(event(tid, .ioctlEnter(fd: 5, cmd: Self.setAttributes)))
        _ = map.apply(event(tid, .setMemoryAttributes(startGFN: gfns.lowerBound, endGFN: gfns.upperBound, attributes: toPrivate ? 8 : 0)))
        return map.apply(event(tid, .ioctlExit(ret: ret)))
    }

    /// Events the kernel dropped may have been conversions: the map knows nothing after them (not the stale state a
    /// comparison with the VMM's map would then call a disagreement), and learns again from the next conversions.
    @Test mutating func lostEventsMakeEveryPageUnknownUntilConvertedAgain() throws {
        var map = TracedAttributes(complete: true)
        _ = convert(&map, 0x100..<0x200, toPrivate: true)
        _ = map.apply(event(10, .ioctlEnter(fd: 5, cmd: Self.setAttributes)))   // in flight when the events were lost
        map.forget()
        #expect(!map.complete && map.forgotten == 1)
        #expect(map.isPrivate(gfn: 0x150) == nil && map.isPrivate(gfn: 0x50) == nil)
        #expect(map.apply(event(10, .ioctlExit(ret: 0))) == nil, "the request in flight was let go")
        _ = convert(&map, 0x140..<0x160, toPrivate: false)
        #expect(map.isPrivate(gfn: 0x150) == false && map.isPrivate(gfn: 0x100) == nil)
    }

    @Test mutating func anAcceptedConversionChangesTheMapAndARefusedOneDoesNot() throws {
        var map = TracedAttributes(complete: true)
        #expect(map.isPrivate(gfn: 0x150) == false, "traced from the VM's start: every page begins shared")
        let c = try #require(convert(&map, 0x100..<0x200, toPrivate: true))
        #expect(c.accepted && c.changedPages == 0x100 && c.startGFN == 0x100 && c.toPrivate == true)
        #expect(c.enteredNs != nil && c.tracedNs != nil && c.enteredNs! < c.tracedNs! && c.tracedNs! < c.returnedNs)
        #expect(map.isPrivate(gfn: 0x100) == true && map.isPrivate(gfn: 0x1FF) == true)
        #expect(map.isPrivate(gfn: 0xFF) == false && map.isPrivate(gfn: 0x200) == false)
        // ENOMEM after the tracepoint: the range is known, the map unchanged.
        let refused = try #require(convert(&map, 0x180..<0x280, toPrivate: false, ret: -12))
        #expect(!refused.accepted && refused.errno == 12 && refused.startGFN == 0x180)
        #expect(map.isPrivate(gfn: 0x180) == true && map.isPrivate(gfn: 0x200) == false)
        #expect(map.applied == 1 && map.refused == 1)
        // A no-op is accepted and changes nothing.
        #expect(convert(&map, 0x100..<0x180, toPrivate: true)?.changedPages == 0)
    }

    @Test mutating func anArgumentCheckRefusalHasOnlyItsErrno() throws {
        var map = TracedAttributes(complete: true)
        _ = map.apply(event(3, .ioctlEnter(fd: 5, cmd: Self.setAttributes)))
        let c = try #require(Self.step(&map, event(3, .ioctlExit(ret: -22))))
        #expect(c.errno == 22 && c.startGFN == nil && c.toPrivate == nil && c.tracedNs == nil)
        #expect(map.runs == TracedAttributes(complete: true).runs)
        // Another ioctl's return on a thread with nothing in flight is no conversion.
        #expect(Self.step(&map, event(3, .ioctlExit(ret: 0))) == nil)
        #expect(Self.step(&map, event(3, .ioctlEnter(fd: 5, cmd: UInt64(KVMIoctl.run.value)))) == nil)
        #expect(Self.step(&map, event(3, .ioctlExit(ret: 0))) == nil)
    }

    @Test mutating func startedAfterTheVMOnlyWhatWasConvertedIsKnown() throws {
        var map = TracedAttributes(complete: false)
        #expect(map.isPrivate(gfn: 0) == nil)
        // The trace began between this ioctl's entry and its tracepoint: still applied once it returns 0.
        _ = map.apply(event(7, .setMemoryAttributes(startGFN: 0x10, endGFN: 0x20, attributes: 8)))
        let c = try #require(Self.step(&map, event(7, .ioctlExit(ret: 0))))
        #expect(c.enteredNs == nil && c.changedPages == nil, "what the pages were before is unknown")
        let v = map.view(start: 0, end: 0x40)
        #expect(v.known == [TracedAttributes.Run(start: 0x10, end: 0x20, isPrivate: true)])
        #expect(v.unknown == [0..<0x10, 0x20..<0x40])
        _ = convert(&map, 0x18..<0x30, toPrivate: false)
        #expect(map.view(start: 0, end: 0x40).known == [.init(start: 0x10, end: 0x18, isPrivate: true), .init(start: 0x18, end: 0x30, isPrivate: false)])
    }

    @Test mutating func interleavedThreadsArePairedByThread() throws {
        var map = TracedAttributes(complete: true)
        _ = map.apply(event(1, .ioctlEnter(fd: 5, cmd: Self.setAttributes)))
        _ = map.apply(event(1, .setMemoryAttributes(startGFN: 0, endGFN: 0x10, attributes: 8)))
        _ = map.apply(event(2, .ioctlEnter(fd: 5, cmd: Self.setAttributes)))
        _ = map.apply(event(2, .setMemoryAttributes(startGFN: 0x20, endGFN: 0x30, attributes: 8)))
        let two = try #require(Self.step(&map, event(2, .ioctlExit(ret: 0))))
        let one = try #require(Self.step(&map, event(1, .ioctlExit(ret: -12))))
        #expect(two.accepted && two.tid == 2 && !one.accepted && one.tid == 1)
        #expect(map.isPrivate(gfn: 0x5) == false && map.isPrivate(gfn: 0x25) == true)
    }

    /// Random conversions against a page-by-page model: the runs stay sorted, apart, merged, and equal to it.
    @Test mutating func randomConversionsMatchAPageModel() throws {
        var rng = SystemRandomNumberGenerator()
        for complete in [true, false] {
            var map = TracedAttributes(complete: complete)
            var pages: [Bool?] = Array(repeating: complete ? false : nil, count: 512)
            for _ in 0..<2000 {
                let a = UInt64.random(in: 0..<512, using: &rng), b = UInt64.random(in: 0...512, using: &rng)
                guard a < b else { continue }
                let p = Bool.random(using: &rng), ok = Int.random(in: 0..<5, using: &rng) != 0
                _ = convert(&map, tid: Int32.random(in: 1...3, using: &rng), a..<b, toPrivate: p, ret: ok ? 0 : -12)
                if ok { for i in a..<b { pages[Int(i)] = p } }
            }
            for (i, want) in pages.enumerated() { #expect(map.isPrivate(gfn: UInt64(i)) == want, "gfn \(i)") }
            let runs = map.runs
            for (x, y) in zip(runs, runs.dropFirst()) {
                #expect(x.start < x.end && x.end <= y.start, "sorted, apart: \(x) \(y)")
                #expect(!(x.end == y.start && x.isPrivate == y.isPrivate), "merged: \(x) \(y)")
            }
        }
    }

    /// One conversion's events at the given times (enter and tracepoint just before its return at `returnNs`).
    static func conversion(tid: Int32, _ gfns: Range<UInt64>, toPrivate: Bool, returnNs: UInt64) -> [TraceEvent] {
        [TraceEvent(tid: tid, cpu: 0, timeNs: returnNs - 2, kind: .ioctlEnter(fd: 5, cmd: setAttributes)),
         TraceEvent(tid: tid, cpu: 0, timeNs: returnNs - 1, kind: .setMemoryAttributes(startGFN: gfns.lowerBound, endGFN: gfns.upperBound, attributes: toPrivate ? 8 : 0)),
         TraceEvent(tid: tid, cpu: 0, timeNs: returnNs, kind: .ioctlExit(ret: 0))]
    }

    /// The CI failure of stop 38 (MapAlarmChecks: one page where the VMM's map and the traced one differed for good):
    /// a conversion's return reached the reader after a later conversion's, and overwrote it. A late conversion
    /// changes only the pages no later one wrote.
    @Test func aConversionThatReturnedEarlierButArrivesLateDoesNotOverwriteALaterOne() throws {
        var map = TracedAttributes(complete: true)
        // Thread 2's shared conversion of 0x10..<0x20 returned at 2000, thread 1's private one of 0x18..<0x30 at
        // 1000: KVM's pages 0x18..<0x20 are shared. The reader gets thread 2's first.
        for e in Self.conversion(tid: 2, 0x10..<0x20, toPrivate: false, returnNs: 2000) { _ = map.apply(e) }
        for e in Self.conversion(tid: 1, 0x18..<0x30, toPrivate: true, returnNs: 1000) { _ = map.apply(e) }
        #expect(map.isPrivate(gfn: 0x18) == false && map.isPrivate(gfn: 0x1F) == false, "the later conversion's pages stand")
        #expect(map.isPrivate(gfn: 0x20) == true && map.isPrivate(gfn: 0x2F) == true, "the late one's own pages are applied")
        #expect(map.isPrivate(gfn: 0x10) == false && map.late == 1 && map.applied == 2)
    }

    /// A conversion later than the ones the map still remembers: where a forgotten later one may have written, the
    /// pages are unknown, never guessed.
    @Test func aConversionLaterThanTheWindowLeavesItsPagesUnknown() throws {
        var map = TracedAttributes(complete: true)
        let window = TracedAttributes.lateWindowNs
        for e in Self.conversion(tid: 2, 0x10..<0x20, toPrivate: true, returnNs: 1000) { _ = map.apply(e) }
        for e in Self.conversion(tid: 2, 0x40..<0x50, toPrivate: true, returnNs: 1000 + 2 * window) { _ = map.apply(e) }
        // Returned at 500: before the first, which the map no longer remembers.
        let c = try #require(Self.conversion(tid: 1, 0x0..<0x48, toPrivate: true, returnNs: 500).map { map.apply($0) }.last ?? nil)
        #expect(c.accepted && c.changedPages == nil)
        #expect(map.isPrivate(gfn: 0x5) == nil && map.isPrivate(gfn: 0x15) == nil, "a forgotten later conversion may have written there")
        #expect(map.isPrivate(gfn: 0x44) == true, "the remembered later conversion stands")
        #expect(map.isPrivate(gfn: 0x50) == false && map.late == 1)
    }

    /// Conversions delivered in a shuffled order (each up to a few places late) against a page model applied in
    /// the order they returned.
    @Test func conversionsArrivingOutOfOrderMatchThePagesInReturnOrder() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            var map = TracedAttributes(complete: true)
            var pages = Array(repeating: false, count: 256)
            var batches: [[TraceEvent]] = []
            for i in 0..<300 {
                let a = UInt64.random(in: 0..<256, using: &rng), b = UInt64.random(in: a...256, using: &rng)
                guard a < b else { continue }
                let p = Bool.random(using: &rng)
                batches.append(Self.conversion(tid: Int32(i % 4 + 1), a..<b, toPrivate: p, returnNs: UInt64(1000 + 10 * i)))
                for g in a..<b { pages[Int(g)] = p }
            }
            // Each conversion moved back by up to 5 places.
            var order = Array(batches.indices)
            for i in order.indices.reversed() { let j = max(0, i - Int.random(in: 0...5, using: &rng)); order.swapAt(i, j) }
            for i in order { for e in batches[i] { _ = map.apply(e) } }
            for (g, want) in pages.enumerated() { #expect(map.isPrivate(gfn: UInt64(g)) == want, "gfn \(g)") }
        }
    }

    @Test mutating func hostileNumbersAndFloodsStayBounded() throws {
        var map = TracedAttributes(complete: true)
        // Start after end, end past 2^52, the top of the range: no trap, clipped or ignored.
        #expect(convert(&map, 0x10..<0x10, toPrivate: true)?.changedPages == 0)
        _ = map.apply(event(1, .ioctlEnter(fd: 5, cmd: Self.setAttributes)))
        _ = map.apply(event(1, .setMemoryAttributes(startGFN: 0x30, endGFN: 0x20, attributes: 8)))
        #expect(Self.step(&map, event(1, .ioctlExit(ret: 0)))?.accepted == true)
        _ = convert(&map, (UInt64(1) << 52 - 1)..<UInt64.max, toPrivate: true)
        #expect(map.isPrivate(gfn: (1 << 52) - 1) == true && map.runs.last?.end == 1 << 52)
        _ = map.apply(event(1, .ioctlExit(ret: Int64.min)))
        // Threads that never return: what is in flight stays bounded.
        for tid in 0..<Int32(20_000) { _ = map.apply(event(tid, .ioctlEnter(fd: 5, cmd: Self.setAttributes))) }
        #expect(map.pendingCount <= TracedAttributes.pendingLimit)
    }
}
