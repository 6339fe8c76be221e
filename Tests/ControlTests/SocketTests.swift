import ControlProtocol
import Foundation
import Testing

struct SocketTests {
    /// A listener that is alive but stuck (never accepts, backlog full) used to make a new VMM's liveness probe
    /// block in `connect` forever; now the path is refused at once as in use.
    @Test func aPathWhoseListenerIsStuckIsRefusedAtOnce() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-stuck-\(getpid()).sock").path
        unlink(path)
        defer { unlink(path) }
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(bound == 0 && listen(listener, 0) == 0)
        // Fill the backlog: non-blocking connects until the kernel says EAGAIN.
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        while held.count < 64 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc != 0 { close(fd); break }
            held.append(fd)
        }
        let started = Date()
        #expect {
            _ = try UnixListener(path: path)
        } throws: { error in
            "\(error)".contains("is in use") && "\(error)".contains("not accepting")
        }
        #expect(Date().timeIntervalSince(started) < 1)
        #expect(FileManager.default.fileExists(atPath: path), "the live listener's socket is left alone")
    }
}

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
