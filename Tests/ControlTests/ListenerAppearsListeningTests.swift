import ControlProtocol
import Foundation
import Testing

/// The socket path appears only once it accepts: a client that connects the moment the file exists is never
/// refused (a connect between bind and listen was, and a demo on a loaded machine met it), and no private name is
/// left beside it.
struct ListenerAppearsListeningTests {
    @Test func aClientThatConnectsAsSoonAsThePathExistsIsNeverRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-listen-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Each round a new path: a client spins until it exists and connects at once, while the listener stays.
        final class Round: @unchecked Sendable { var path = ""; var result: String?; let cond = NSCondition() }
        var refused: [String] = []
        for i in 0..<1000 {
            let round = Round()
            round.path = dir + "/vm\(i).sock"
            let client = Thread {
                while access(round.path, F_OK) != 0 {}
                let r: String
                do { close(try connectUnixSocket(path: round.path)); r = "ok" } catch { r = "\(error)" }
                round.cond.lock(); round.result = r; round.cond.broadcast(); round.cond.unlock()
            }
            client.start()
            let l = try UnixListener(path: round.path)
            round.cond.lock()
            while round.result == nil { round.cond.wait() }
            let r = round.result!
            round.cond.unlock()
            while let c = l.accept() { close(c) }
            l.remove()
            if r != "ok" { refused.append(r) }
        }
        #expect(refused.isEmpty, "\(refused.count) of 1000 connects made as soon as the path appeared failed: \(refused.prefix(3))")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".new") }.isEmpty, "no private name is left")
    }
}
