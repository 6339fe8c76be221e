import ControlProtocol
import Foundation
import Inspector
@testable import Schema
import Testing

/// The schema against a session recorded before it existed (commit 7803fbf, `Fixtures/recording-7803fbf.*`): the
/// wire format must not have moved, and replay must show what it showed then.
@Suite struct WireCompatibilityTests {
    static let name = "Tests/InspectorTests/Fixtures/recording-7803fbf"
    static func fixture(_ suffix: String) -> URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/recording-7803fbf\(suffix)")
    }

    /// Every reply and event the old VMM sent, read into the schema's types and written back, is the same JSON, member
    /// for member and in the same order: the server, which writes only through these types, writes what it wrote.
    @Test func everyRecordedReplyAndEventRoundTripsThroughTheSchema() throws {
        let recording = try Recording.read(path: Self.fixture(".jsonl.gz").path)
        var counts: [String: Int] = [:]
        for (_, entry) in recording.entries {
            switch entry {
            case .snapshot(let j):
                #expect(StateSnapshot(json: j).json == j, "query-snapshot")
                counts["snapshot", default: 0] += 1
            case .reply(let command, let value):
                let again: JSON? = switch CommandName(rawValue: command) {
                case .queryVM?: QueryVM.reply(value).json
                case .queryMemslots?: QueryMemslots.reply(value).json
                case .queryMemoryAttributes?: QueryMemoryAttributes.reply(value).json
                case .queryVCPUs?: QueryVCPUs.reply(value).json
                default: nil
                }
                #expect(again == value, "\(command): \(value.serialized.prefix(300))")
                counts[command, default: 0] += 1
            case .event(let e):
                guard let event = Event(message: e) else { Issue.record("not an event: \(e.serialized)"); continue }
                if case .other = event { Issue.record("a vmscope event read as someone else's: \(e.serialized)") }
                // The recorder wrote fault events without their timestamp (the fast decoder dropped it): compare what
                // the message carried.
                let wall: UInt64? = e["timestamp"].map { t in
                    (t["seconds"]?.uint64Value ?? 0) * 1_000_000_000 + (t["microseconds"]?.uint64Value ?? 0) * 1000
                }
                #expect(event.message(wallNs: wall) == e, "\(e.serialized.prefix(300))")
                counts[event.name, default: 0] += 1
            case .view:
                Issue.record("a view entry in a VMM's recording (only a stock QEMU's have them)")
            case .end(let reason, let peerGone):
                #expect(peerGone, "the old recorder's '\(reason)' says the VMM went away")
            }
        }
        // The fixture holds every kind the test claims to check.
        for kind in ["snapshot", "query-memslots", "query-memory-attributes", "query-vcpus", "MEMORY_FAULT",
                     "MEMORY_ATTRIBUTES_CHANGED", "MEMSLOTS_CHANGED", "VCPU_STATE_CHANGED", "FAULT_INJECTED", "GUEST_REPORT"] {
            #expect((counts[kind] ?? 0) > 0, "no \(kind) in the fixture")
        }
    }

    /// Replay of the old recording prints, byte for byte, what `vmscope replay --dump-at` printed at 7803fbf.
    @Test(arguments: [("end", ".end.json"), ("1.5", ".1.5s.json"), ("2", ".2s.txt")])
    func replayShowsWhatItShowedBeforeTheSchema(at: String, suffix: String) throws {
        let recording = try Recording.read(path: Self.fixture(".jsonl.gz").path)
        var replay = Replay(recording, file: Self.name + ".jsonl.gz")
        replay.seek(to: at == "end" ? recording.durationNs : UInt64(Double(at)! * 1e9))
        let text = suffix.hasSuffix(".txt")
            ? Snapshot.text(replay.model, ascii: false, nowNs: replay.monotonicNs(at: replay.positionNs))
            : Snapshot.json(replay.model, faultLimit: 1000, takenAtWallNs: recording.header.startedAtWallNs + replay.positionNs,
                            origin: .recording(file: Self.name + ".jsonl.gz", offsetNs: replay.positionNs)).pretty() + "\n"
        let expected = try String(contentsOf: Self.fixture(suffix), encoding: .utf8)
        if text != expected {
            let a = text.split(separator: "\n", omittingEmptySubsequences: false)
            let b = expected.split(separator: "\n", omittingEmptySubsequences: false)
            let k = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
            Issue.record("first difference at line \(k + 1):\n now: \(k < a.count ? a[k] : "<end>")\n was: \(k < b.count ? b[k] : "<end>")")
        }
    }
}
