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

