import ControlProtocol
import ControlServer
import Foundation
import Inspector
import Schema
import Testing

/// Issue 30: a key's action is one round trip. The inspector used to mark every view stale after an action and
/// re-query them (4 round trips for a pause); the VMM's events say what changed, and only that is read again.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct InspectorRoundTripTests {
    @Test func anActionIsOneRoundTripAndOnlyWhatItsEventsChangedIsReadAgain() throws {
        // A guest that converts nothing of its own: every event is the test's doing.
        let served = try Served { $0.allowMutations = true; $0.guest.convertEvery = 0; $0.guest.wrongViewEvery = 0 }
        defer { served.stop() }
        let client = try ControlClient(path: served.path, timeoutMs: 10_000, decodeFaults: true)
        let source = SocketSource(path: served.path, client: client)
        defer { source.close() }
        var model = InspectorModel()
        // The poll's clock stays put, so no periodic vCPU query falls due between the counts.
        let now = HostClock.monotonicNs()
        _ = source.poll(&model, nowNs: now)   // connects: query-vm
        _ = source.poll(&model, nowNs: now)   // the first memslots, attributes and vCPUs
        #expect(!model.memslotsStale && !model.attributesStale && !model.vcpus.isEmpty)

        for action: InspectorAction in [.vcpu(index: 0, .pause), .setPolicy(.convert), .vcpu(index: 0, .resume)] {
            let before = client.commandsSent
            _ = try source.perform(action, model: &model)
            #expect(client.commandsSent - before == 1, "\(action)")
            // Its events (a vCPU's state) change nothing that must be read again.
            usleep(50_000)
            _ = source.poll(&model, nowNs: now)
            #expect(client.commandsSent - before == 1, "\(action): \(client.commandsSent - before) round trips")
        }

        // A conversion changes the map and the memslots: its events bring those two queries, not more.
        let before = client.commandsSent
        _ = try source.perform(.convert(gpa: 0x40_0000, size: 0x20_0000, to: .shared), model: &model)
        #expect(client.commandsSent - before == 1)
        #expect(eventually { _ = source.poll(&model, nowNs: now); return !model.attributesStale && model.vm.ramSize > 0
            && model.runs.contains { $0.gpa <= 0x40_0000 && $0.end >= 0x60_0000 && !$0.isPrivate } })
        #expect(client.commandsSent - before <= 3, "\(client.commandsSent - before) round trips")
    }
}
