import ControlProtocol
import Foundation
import Synchronization
import Testing
import VMM

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ClientTests {
    @Test func tellsVmscopeByItsGreetingAndDeliversFaultEventsInOrder() throws {
        let s = try Served { $0.guest.wrongViewEvery = 2 }
        defer { s.stop() }
        let client = try ControlClient(path: s.path)
        #expect(client.peer == .vmscope(protocolVersion: 1, package: "vmscope 0.1.0"))
        #expect(try client.execute("query-vm")["vcpus"] == .int(2))
        #expect(throws: ControlClientError.command(errorClass: "CommandNotFound", desc: "The command nope has not been found")) {
            try client.execute("nope")
        }
        var seqs: [UInt64] = []
        let deadline = Date().addingTimeInterval(10)
        while seqs.count < 20 && Date() < deadline {
            guard let e = client.nextEvent(timeoutMs: 1000), e["event"] == .string("MEMORY_FAULT") else { continue }
            #expect(e["data"]?["dropped"] == .int(0))
            seqs += (e["data"]?["records"]?.arrayValue ?? []).compactMap { $0["seq"]?.uint64Value }
        }
        #expect(seqs.count >= 20)
        #expect(zip(seqs, seqs.dropFirst()).allSatisfy { $1 == $0 + 1 }, "\(seqs)")
    }

    @Test func reconnectsWithBackoffWhenTheVMMComesBack() throws {
        let first = try Served()
        let path = first.path
        let client = try ControlClient(path: path)
        first.stop()
        #expect(eventually { !client.isConnected }, "the client notices the VMM went away")
        #expect(throws: ControlClientError.self) { try client.execute("query-vm") }

        let retries = Atomic<Int>(0)
        let result = Mutex<ControlClient?>(nil)
        let reconnecting = Thread {
            let c = connectWithBackoff(path: path, maxDelayMs: 200, keepTrying: { true },
                                       onRetry: { _, _ in retries.add(1, ordering: .relaxed) })
            result.withLock { $0 = c }
        }
        reconnecting.start()
        #expect(eventually { retries.load(ordering: .relaxed) >= 2 }, "retrying while nothing listens")
        let second = try Served(path: path)
        defer { second.stop() }
        #expect(eventually(10) { result.withLock { $0 != nil } })
        let again = try #require(result.withLock { $0 })
        #expect(try again.execute("query-vm")["pid"] == .int(Int64(getpid())))
    }
}
