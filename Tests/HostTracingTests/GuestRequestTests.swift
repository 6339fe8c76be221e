@testable import Schema
import KVM
import Testing
@testable import HostTracing

/// The guest's `KVM_HC_MAP_GPA_RANGE` requests as the trace follows them (issue 29): pending from the hypercall until
/// the vCPU thread goes back in, with what its VMM did in between; nothing matched by address.
@Suite struct GuestRequestTests {
    typealias TracedHypercall = HostTracing.Hypercall
    static let run = UInt64(KVMIoctl.run.value)
    static let setAttributes = UInt64(KVMIoctl.setMemoryAttributes.value)
    var t: UInt64 = 0
    var map = TracedAttributes(complete: true)
    var tracker = GuestRequestTracker(conversionsTraced: true)
    var ended: [GuestRequestTracker.Request] = []

    mutating func feed(_ tid: Int32, _ kind: TraceEvent.Kind) {
        t += 1000
        let e = TraceEvent(tid: tid, cpu: 0, timeNs: t, kind: kind)
        let c = map.apply(e)
        ended += tracker.apply(e, completed: c)
    }

    /// The guest on thread `tid` asks for `pages` 4 KiB pages at `gpa` (attributes bit 4: to private).
    mutating func ask(_ tid: Int32, gpa: UInt64, pages: UInt64, toPrivate: Bool) {
        feed(tid, .hypercall(TracedHypercall(nr: TracedHypercall.mapGPARange, a0: gpa, a1: pages, a2: toPrivate ? 0x10 : 0x20, a3: 0)))
    }

    mutating func convert(_ tid: Int32, _ gfns: Range<UInt64>, toPrivate: Bool, ret: Int64 = 0) {
        feed(tid, .ioctlEnter(fd: 5, cmd: Self.setAttributes))
        feed(tid, .setMemoryAttributes(startGFN: gfns.lowerBound, endGFN: gfns.upperBound, attributes: toPrivate ? 8 : 0))
        feed(tid, .ioctlExit(ret: ret))
    }

    @Test mutating func aForwardedRequestIsPendingUntilItsVCPUGoesBackIn() throws {
        ask(7, gpa: 0x80000, pages: 1, toPrivate: false)
        let pending = try #require(tracker.pendingRequests.first)
        #expect(pending.gfns == 0x80..<0x81 && pending.range.toPrivate == false && pending.outcome == .pending)
        feed(7, .userspaceExit(reason: .hypercall, errno: 0))
        // The VMM converts another view of the page (vmscope's kernel engine: its shared alias); still pending.
        convert(7, 0x80080..<0x80081, toPrivate: false)
        #expect(tracker.pending.count == 1 && ended.isEmpty, "pending until the vCPU re-enters")
        // Another thread's conversion is not this request's answer.
        convert(9, 0x10..<0x20, toPrivate: true)
        feed(7, .ioctlEnter(fd: 6, cmd: Self.run))
        let r = try #require(ended.first)
        #expect(ended.count == 1 && tracker.pending.isEmpty)
        #expect(r.outcome == .converted && r.conversions == 1 && r.forwarded)
        #expect(r.answeredNs! > r.requestedNs)
        #expect(r.json["outcome"]?.stringValue == "converted" && r.json["to"]?.stringValue == "shared")
    }

    @Test mutating func aRequestTheVMMAnsweredWithoutConvertingOrWithARefusalSaysSo() throws {
        ask(7, gpa: 0x1000, pages: 2, toPrivate: true)
        feed(7, .userspaceExit(reason: .hypercall, errno: 0))
        feed(7, .ioctlEnter(fd: 6, cmd: Self.run))
        ask(7, gpa: 0x1000, pages: 2, toPrivate: true)
        feed(7, .userspaceExit(reason: .hypercall, errno: 0))
        convert(7, 0x1..<0x3, toPrivate: true, ret: -12)
        feed(7, .ioctlEnter(fd: 6, cmd: Self.run))
        #expect(ended.map(\.outcome) == [.notConverted, .refused])
        #expect(map.isPrivate(gfn: 0x1) == false, "a refused conversion changes nothing")
    }

    @Test mutating func aRequestKVMKeptIsAnsweredAtTheNextOtherExit() throws {
        // No KVM_CAP_EXIT_HYPERCALL: KVM answers -ENOSYS itself, and the vCPU leaves the guest later for something else.
        ask(3, gpa: 0x2000, pages: 1, toPrivate: true)
        feed(3, .userspaceExit(reason: .io, errno: 0))
        #expect(ended.map(\.outcome) == [.answeredByKVM])
        // Another hypercall (not MAP_GPA_RANGE) is not a request.
        feed(3, .hypercall(TracedHypercall(nr: 11, a0: 0, a1: 0, a2: 0, a3: 0)))
        #expect(tracker.pending.isEmpty)
    }

    @Test mutating func withoutTracedConversionsAForwardedRequestIsOnlyForwarded() throws {
        tracker = GuestRequestTracker(conversionsTraced: false)
        ask(3, gpa: 0x2000, pages: 1, toPrivate: true)
        feed(3, .userspaceExit(reason: .hypercall, errno: 0))
        feed(3, .userspaceExit(reason: .io, errno: 0))
        #expect(ended.map(\.outcome) == [.forwarded], "6.12: what the VMM did is not known, and not guessed")
    }

    /// A guest that asks again has had its answer: from KVM if no HYPERCALL exit came between, else from the VMM (on
    /// 6.12, whose re-entry is not traced, this is how a forwarded request ends: the lab saw half of them end so).
    @Test mutating func theNextRequestEndsTheLastOne() throws {
        ask(3, gpa: 0x2000, pages: 1, toPrivate: true)
        ask(3, gpa: 0x3000, pages: 1, toPrivate: true)
        feed(3, .userspaceExit(reason: .hypercall, errno: 0))
        ask(3, gpa: 0x3000, pages: 1, toPrivate: false)
        #expect(ended.map(\.outcome) == [.answeredByKVM, .notConverted] && tracker.pending.count == 1)
        tracker = GuestRequestTracker(conversionsTraced: false)
        ended = []
        ask(3, gpa: 0x2000, pages: 1, toPrivate: true)
        feed(3, .userspaceExit(reason: .hypercall, errno: 0))
        ask(3, gpa: 0x2000, pages: 1, toPrivate: false)
        #expect(ended.map(\.outcome) == [.forwarded])
    }

    @Test mutating func lostEventsLeaveNoRequestPendingForever() throws {
        ask(3, gpa: 0x2000, pages: 1, toPrivate: true)
        #expect(tracker.forget().map(\.outcome) == [.unanswered] && tracker.pending.isEmpty)
        // Hostile sizes: a page size the ABI lacks, a range past 2^64.
        ask(4, gpa: 0x1000, pages: 1, toPrivate: true)
        feed(4, .hypercall(TracedHypercall(nr: TracedHypercall.mapGPARange, a0: 0xFFFF_FFFF_FFFF_F000, a1: .max, a2: 0x12, a3: 0)))
        #expect(tracker.pendingRequests.first?.gfns.map { $0.upperBound <= TracedAttributes.gfnLimit } == true)
        feed(4, .hypercall(TracedHypercall(nr: TracedHypercall.mapGPARange, a0: 0, a1: 1, a2: 0xF, a3: 0)))
        #expect(tracker.pendingRequests.first?.gfns == nil)
        for i in 0..<5000 { ask(Int32(100 + i), gpa: 0, pages: 1, toPrivate: true) }
        #expect(tracker.pending.count <= GuestRequestTracker.threadLimit)
    }
}
