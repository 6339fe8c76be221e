import Foundation
@testable import Inspector
import Schema
import Testing

/// The session loop against sources: a fifth one written here in a few lines (what adding host tracing will take),
/// and the recording source on the fixture.
@Suite struct DriverTests {
    /// A source that is none of the shipped ones: canned facts, conversions refused, anything else done and noted.
    final class CannedSource: VMSource {
        var polls = 0
        var performed: [InspectorAction] = []
        func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
            polls += 1
            guard polls == 1 else { return false }
            model.vm.name = "canned-vm"
            model.vm.ramSize = 64 << 20
            model.runs = [RunRow(gpa: 0, size: 64 << 20, isPrivate: true)]
            model.vcpus = [VCPURow(index: 0, state: .known(.running), lastExit: "HLT")]
            model.connection = .connected("canned")
            return true
        }
        func refusal(_ action: InspectorAction) -> String? {
            if case .convert = action { return "canned facts cannot be converted" }
            return nil
        }
        func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
            performed.append(action)
            if case .readMemory = action { return .bytes([0xAB, 0xCD]) }
            return .done(detail: " (canned)")
        }
    }

    @Test func aNewSourceNeedsOnlyTheProtocolAndItsRefusalsReachTheStatusLine() throws {
        let source = CannedSource()
        let driver = InspectorDriver(source: source, ui: InspectorUI(themeNames: ["default"], ascii: true, readOnly: false))
        #expect(driver.tick(nowNs: 1, width: 120, height: 40), "the first pass has a frame to draw")
        var renderer = Renderer(ascii: true)
        #expect(driver.frame(&renderer, width: 120, height: 40, nowNs: 1).lines.joined().contains("canned-vm"))
        #expect(!driver.tick(nowNs: 2, width: 120, height: 40), "nothing changed, no frame")

        // A conversion: asked, confirmed, refused by the source with its reason; nothing performed.
        _ = driver.handle(.char("s"), nowNs: 3)
        _ = driver.handle(.char("y"), nowNs: 3)
        #expect(driver.ui.status?.isError == true)
        #expect(driver.ui.status?.text.hasSuffix("refused: canned facts cannot be converted") == true, "\(String(describing: driver.ui.status))")
        #expect(source.performed.isEmpty)

        // Pausing the vCPU: performed by the source, reported done with the source's detail.
        _ = driver.handle(.char("4"), nowNs: 4)
        #expect(driver.handle(.char("P"), nowNs: 4).isEmpty, "nothing left for the terminal to do")
        #expect(source.performed == [.vcpu(index: 0, .pause)])
        #expect(driver.ui.status?.text == "pause vCPU 0: done (canned)")

        // A hex dump comes from the source's bytes; q is left to the caller.
        _ = driver.handle(.char("1"), nowNs: 5)
        _ = driver.handle(.char("x"), nowNs: 5)
        #expect(driver.ui.overlay == .hexDump(gpa: 0, bytes: [0xAB, 0xCD]))
        _ = driver.handle(.escape, nowNs: 5)
        #expect(driver.handle(.char("q"), nowNs: 6) == [.quit])
        // The timeline keys say this source has none.
        _ = driver.handle(.char("]"), nowNs: 7)
        #expect(driver.ui.status?.text.contains("replay") == true)
    }

    /// Replay is the same loop: the recording source on the fixture plays, pauses, seeks, and refuses actions.
    @Test func theRecordingSourceRunsInTheSameLoop() throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/recording-7803fbf.jsonl.gz")
        let recording = try Recording.read(path: file.path)
        let source = RecordingSource(replay: Replay(recording, file: file.path), speed: 1, nowNs: 0)
        let driver = InspectorDriver(source: source, ui: InspectorUI(themeNames: ["default"], ascii: true, readOnly: true))
        _ = driver.tick(nowNs: 1_500_000_000, width: 120, height: 40)
        #expect(driver.ui.replay?.positionNs == 1_500_000_000 && driver.ui.replay?.paused == false)
        #expect(driver.model.faultsReceived > 0 && !driver.model.memslots.isEmpty)
        // Space pauses: the position holds while the clock runs.
        _ = driver.handle(.char(" "), nowNs: 1_500_000_000)
        _ = driver.tick(nowNs: 2_500_000_000, width: 120, height: 40)
        #expect(driver.ui.replay?.positionNs == 1_500_000_000 && driver.ui.replay?.paused == true)
        // To the end: the recorded VMM went away, and the views say so.
        _ = driver.handle(.char("]"), nowNs: 2_500_000_000)
        _ = driver.tick(nowNs: 2_500_000_000, width: 120, height: 40)
        #expect(driver.ui.replay?.positionNs == recording.durationNs)
        guard case .disconnected(let why) = driver.model.connection else { Issue.record("still connected at the end"); return }
        #expect(why == Recording.peerGoneReason)
        // Actions are refused by the source, with its reason.
        driver.act(.setPolicy(.report))
        #expect(driver.ui.status?.text == "fault policy report: refused: this is a replay")
    }
}
