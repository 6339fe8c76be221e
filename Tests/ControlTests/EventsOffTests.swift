@testable import Schema
import ControlProtocol
import ControlServer
import Foundation
import Testing
import TestSupport
import VMM

/// `set-events`: a client that only asks (an exporter polling `query-metrics`) turns its events off and keeps its
/// connection; another client is sent events as before, and turned on again they come from then on.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct EventsOffTests {
    /// Lines `c` receives within `seconds` (events and replies alike).
    static func lines(_ c: LineClient, for seconds: Double) throws -> [JSON] {
        var out: [JSON] = []
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            guard var line = try c.conn.readLine(timeoutMs: Int32(max(1, deadline.timeIntervalSinceNow * 1000))) else { continue }
            out.append(try JSON.parse(bytes: &line))
        }
        return out
    }

    static func faultBatches(_ messages: [JSON]) -> [JSON] {
        messages.filter { $0["event"] == .string(EventName.memoryFault.rawValue) }.compactMap { $0["data"] }
    }

    @Test func aClientTurnsItsEventsOffAndOnWhileAnotherIsSentThem() throws {
        // A guest that touches the wrong view every pass: fault batches all the time. Read-only: the command is
        // about the connection, not the VM.
        let s = try Served { $0.vcpus = 1; $0.guest.wrongViewEvery = 1; $0.allowMemoryReads = false }
        defer { s.stop() }
        let quiet = try LineClient(s.path), other = try LineClient(s.path)
        try quiet.negotiate()
        try other.negotiate()

        #expect(errorClass(try quiet.call(#"{"execute":"set-events","arguments":{"enabled":"no"}}"#)) == "GenericError")
        #expect(errorClass(try quiet.call(#"{"execute":"set-events"}"#)) == "GenericError")
        #expect(try quiet.call(#"{"execute":"set-events","arguments":{"enabled":false},"id":7}"#)
                == .object([("return", .object([])), ("id", .int(7))]))
        // What was queued before the reply came before it; after it, nothing.
        let whileOff = try Self.lines(quiet, for: 1.5)
        let sentToOther = Self.faultBatches(try Self.lines(other, for: 0.5))
        #expect(whileOff.isEmpty, "\(whileOff.count) messages after events were turned off: \(whileOff.prefix(2))")
        #expect(!sentToOther.isEmpty, "the other client was sent no fault batch")
        // Its commands are answered as before, with no event ahead of the reply.
        let eventsBefore = quiet.events.count
        #expect(try quiet.call(#"{"execute":"query-vm"}"#)["return"]?["name"] != nil)
        #expect(quiet.events.count == eventsBefore)

        let before = s.vmm.faults.total
        #expect(try quiet.call(#"{"execute":"set-events","arguments":{"enabled":true}}"#) == .object([("return", .object([]))]))
        let batches = Self.faultBatches(try Self.lines(quiet, for: 1.5))
        let first = try #require(batches.first, "no fault batch after events were turned on again")
        // From then on: nothing of what went by while they were off, and none of it counted as dropped.
        #expect(first["dropped"]?.uint64Value == 0)
        let firstSeq = try #require(first["records"]?.arrayValue?.first?["seq"]?.uint64Value)
        #expect(firstSeq > before, "the first record after turning events on is \(firstSeq); \(before) were made before")
    }
}
