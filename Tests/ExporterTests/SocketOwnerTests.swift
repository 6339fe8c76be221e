import Foundation
import Testing
@testable import Exporter

/// Who holds a loopback connection, asked of the kernel (sock_diag) and read from /proc/net/tcp: both name this
/// process's user for a connection it made, and nobody for a 4-tuple no socket has.
struct SocketOwnerTests {
    /// A listener on 127.0.0.1 and a client connected to it; their ports.
    static func connectedPair() throws -> (listener: Int32, client: Int32, server: Int32, clientPort: Int, serverPort: Int) {
        func port(_ fd: Int32, peer: Bool = false) -> Int {
            var a = sockaddr_in(), len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { peer ? getpeername(fd, $0, &len) : getsockname(fd, $0, &len) } }
            return Int(UInt16(bigEndian: a.sin_port))
        }
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET); a.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(l, 4)
        a.sin_port = UInt16(port(l)).bigEndian
        let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        try #require(rc == 0)
        let s = accept(l, nil, nil)
        return (l, c, s, port(c), port(l))
    }

    @Test func theKernelAndProcNameThisUserForItsOwnConnection() throws {
        let p = try Self.connectedPair()
        defer { close(p.client); close(p.server); close(p.listener) }
        #expect(SocketOwner.uid(client: ("127.0.0.1", p.clientPort), server: ("127.0.0.1", p.serverPort)) == getuid())
        #expect(MetricsPeer.owner(clientPort: p.clientPort, serverPort: p.serverPort) == getuid())
        // The server's own end, seen as a "client", is a different socket: the same user here, found the same way.
        #expect(SocketOwner.uid(client: ("127.0.0.1", p.serverPort), server: ("127.0.0.1", p.clientPort)) == getuid())
        // A 4-tuple no socket has: no owner, no guess.
        #expect(SocketOwner.uid(client: ("127.0.0.1", 1), server: ("127.0.0.1", p.serverPort)) == nil)
        #expect(SocketOwner.uid(client: ("not an address", p.clientPort), server: ("127.0.0.1", p.serverPort)) == nil)
    }
}
