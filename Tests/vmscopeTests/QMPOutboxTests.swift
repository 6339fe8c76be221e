@testable import Schema
import ControlProtocol
import Testing
@testable import Lab

/// The lab agent's outbox: what a client reads through the lab relay, in the order the relay sends it.
@Suite struct QMPOutboxTests {
    /// An event line of a length that depends on `padding` only.
    static func event(_ n: Int, padding: Int = 0) -> String {
        let digits = String(n), n = String(repeating: "0", count: max(0, 6 - digits.count)) + digits
        return #"{"event":"GUEST_REPORT","data":{"n":"\#(n)","pad":"\#(String(repeating: "x", count: padding))"},"timestamp":{"seconds":1,"microseconds":0}}"#
    }

    /// Drains the outbox `chunk` bytes at a time, as the pump does, and splits what it sent into lines.
    static func drain(_ box: inout QMPOutbox, chunk: Int = 100) -> [String] {
        var out: [UInt8] = []
        while !box.isEmpty { out += box.take(max: chunk, wallNs: 1_000_000_000) }
        return String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    @Test func aReplyOvertakesTheEventsQueuedBeforeIt() {
        var box = QMPOutbox()
        box.feed(Array((Self.event(1) + "\n" + Self.event(2) + "\n" + #"{"return":{},"id":7}"# + "\n").utf8)[...])
        #expect(box.hasReply)
        let lines = Self.drain(&box)
        #expect(lines == [#"{"return":{},"id":7}"#, Self.event(1), Self.event(2)])
    }

    /// A message already partly on the link is finished before the reply: the stream never interleaves two.
    @Test func aMessageOnTheLinkIsFinishedFirst() {
        var box = QMPOutbox()
        box.feed(Array((Self.event(1, padding: 300) + "\n").utf8)[...])
        var sent = box.take(max: 50, wallNs: 0)
        box.feed(Array((#"{"return":{"qemu":{}},"id":"v1"}"# + "\n").utf8)[...])
        while !box.isEmpty { sent += box.take(max: 50, wallNs: 0) }
        let lines = String(decoding: sent, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines == [Self.event(1, padding: 300), #"{"return":{"qemu":{}},"id":"v1"}"#])
    }

    /// Events beyond the bound are dropped and said, with the relay as where, before the next event passed on.
    @Test func eventsBeyondTheBoundAreDroppedAndCounted() throws {
        var box = QMPOutbox()
        let one = Self.event(0, padding: 1000).utf8.count + 1
        let fits = QMPOutbox.eventBound / one
        let total = fits + 25
        for i in 0..<total { box.feed(Array((Self.event(i, padding: 1000) + "\n").utf8)[...]) }
        #expect(box.dropped == UInt64(total - fits))
        let lines = Self.drain(&box, chunk: 4096)
        #expect(lines.count == fits + 1)
        var note = Array(lines[0].utf8)
        let m = try JSON.parse(bytes: &note)
        #expect(m["event"]?.stringValue == "EVENTS_DROPPED")
        #expect(m["data"]?["count"]?.uint64Value == UInt64(total - fits))
        #expect(m["data"]?["where"]?.stringValue == "lab relay")
        #expect(Array(lines.dropFirst()) == (0..<fits).map { Self.event($0, padding: 1000) })
    }

    /// One event larger than the bound still passes when nothing else is queued (a large fault batch to a client
    /// that keeps up); replies are never dropped, whatever their size.
    @Test func aLargeEventAloneAndEveryReplyPass() {
        var box = QMPOutbox()
        let big = Self.event(1, padding: QMPOutbox.eventBound * 2)
        let reply = #"{"return":"\#(String(repeating: "y", count: QMPOutbox.eventBound * 3))"}"#
        box.feed(Array((big + "\n" + reply + "\n" + reply + "\n").utf8)[...])
        #expect(box.dropped == 0)
        #expect(box.replyBytes == 2 * (reply.utf8.count + 1))
        #expect(Self.drain(&box, chunk: 4096) == [reply, reply, big])
    }

    /// Lines split anywhere across reads, and the VMM's last unfinished line at its end of stream, pass whole.
    @Test func linesSplitAcrossReadsAndAnUnfinishedLastLine() {
        var box = QMPOutbox()
        let text = Array((Self.event(1) + "\n" + #"{"return":{}}"# + "\n" + #"{"QMP""#).utf8)
        for b in text { box.feed([b][...]) }
        #expect(box.replyBytes == #"{"return":{}}"#.utf8.count + 1)
        var out: [UInt8] = []
        while !box.isEmpty { out += box.take(max: 7, wallNs: 0) }
        #expect(String(decoding: out, as: UTF8.self) == #"{"return":{}}"# + "\n" + Self.event(1) + "\n")
        box.finish()
        #expect(!box.isEmpty)
        #expect(String(decoding: box.take(max: 100, wallNs: 0), as: UTF8.self) == #"{"QMP""#)
        #expect(box.isEmpty)
    }
}
