import Foundation
import HostTracing
import Logging
import NIOCore
import Synchronization

/// Who is at the other end of a metrics connection, as far as fairness goes: on loopback the local user owning the
/// client's socket (the kernel's word, not the client's: one sock_diag request, or /proc/net/tcp where that gets no
/// answer), elsewhere the address. Root and the exporter's own user are not limited (they can stop the exporter
/// anyway).
enum MetricsPeer {
    /// The key a connection counts against, or nil when it is not limited.
    static func key(remote: SocketAddress?, local: SocketAddress?) -> String? {
        guard let remote, let rip = remote.ipAddress, let rport = remote.port else { return nil }
        let loopback = rip.hasPrefix("127.") || rip == "::1" || rip == "::ffff:127.0.0.1"
        guard loopback, let local, let lport = local.port, let lip = local.ipAddress else { return "address \(rip)" }
        guard let uid = SocketOwner.uid(client: (rip, rport), server: (lip, lport)) ?? owner(clientPort: rport, serverPort: lport) else {
            return "address \(rip)"
        }
        if uid == 0 || uid == geteuid() { return nil }
        return "uid \(uid)"
    }

    /// The uid owning the loopback socket whose local port is `clientPort` and remote port `serverPort`: the line of
    /// /proc/net/tcp (or tcp6) for the client's end. A busy host lists thousands of sockets, so the file (at most
    /// 64 MiB) is searched (strstr) for the client's port, and only those lines are parsed.
    static func owner(clientPort: Int, serverPort: Int) -> uid_t? {
        let needle = Array(String(format: ":%04X ", clientPort).utf8), server = String(format: ":%04X", serverPort)
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            guard var data = readPseudoFileBytes(table, maxBytes: 64 << 20) else { continue }
            data.append(0)   // strstr's end
            let cNeedle = needle.map { CChar(bitPattern: $0) } + [0]
            var from = 0
            while from < data.count - 1 {
                let hit: Int? = data.withUnsafeBufferPointer { d in
                    d.baseAddress!.withMemoryRebound(to: CChar.self, capacity: d.count) { base in
                        strstr(base + from, cNeedle).map { UnsafePointer($0) - base }
                    }
                }
                guard let at = hit else { break }
                let start = (data[..<at].lastIndex(of: 0x0A) ?? -1) + 1
                let end = data[at...].firstIndex(of: 0x0A) ?? data.count
                from = end
                let f = String(decoding: data[start..<end], as: UTF8.self).split(separator: " ", omittingEmptySubsequences: true)
                if f.count > 7, f[1].hasSuffix(String(decoding: needle.dropLast(), as: UTF8.self)), f[2].hasSuffix(server), let uid = uid_t(f[7]) { return uid }
            }
        }
        return nil
    }
}

/// Connections each peer (`MetricsPeer`) holds at once, against `perPeer`: one user holding many idle or slow
/// connections (another uid on the host, say) is refused beyond its share instead of filling the server's
/// `maxConnections` and leaving every other scraper waiting in the accept queue.
final class ConnectionQuota: Sendable {
    let perPeer: Int
    /// Connections open now; while there are at most `freeBelow`, nobody's share is looked up or counted (a quiet
    /// server spends nothing on this, and a busy one can still hold at most `freeBelow` + `perPeer` of one user's).
    let open = Atomic<Int>(0)
    static let freeBelow = 16
    private let held = Mutex<[String: Int]>([:])
    private let refusals = Mutex<[String: UInt64]>([:])
    let logger: Logger

    init(perPeer: Int, logger: Logger) {
        self.perPeer = perPeer
        self.logger = logger
    }

    /// Takes a slot for `key`; false when it holds its share already.
    func admit(_ key: String) -> Bool {
        let ok = held.withLock { h -> Bool in
            guard h[key, default: 0] < perPeer else { return false }
            h[key, default: 0] += 1
            return true
        }
        if !ok {
            let n = refusals.withLock { r -> UInt64 in r[key, default: 0] += 1; return r[key]! }
            // Said once, then at every power of two: a flood does not flood the log.
            if n & (n - 1) == 0 {
                logger.warning("metrics: refused a connection from \(key): it holds \(perPeer) already (\(n) refused so far)")
            }
        }
        return ok
    }

    func release(_ key: String) {
        held.withLock { h in
            h[key, default: 1] -= 1
            if h[key] == 0 { h[key] = nil }
        }
    }

    var refusedTotal: UInt64 { refusals.withLock { $0.values.reduce(0, &+) } }
}

/// In each connection's pipeline: counts it against its peer's share (closing it at once beyond that), and reads
/// no further request while the connection cannot take more output (a client that pipelines requests and never
/// reads the answers holds one answer and the socket's buffers, not an ever-growing queue of them).
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    // What passes through is not looked at (HTTP parts, forwarded as they are).
    typealias InboundIn = Any
    typealias InboundOut = Any
    typealias OutboundIn = Any
    typealias OutboundOut = Any

    private let quota: ConnectionQuota
    private var key: String?
    private var decided = false
    private var opened = false
    private var readPending = false

    init(quota: ConnectionQuota) { self.quota = quota }

    func handlerAdded(context: ChannelHandlerContext) {
        _ = HTTPVersionKeepAlive.install(in: context.pipeline.syncOperations)
        if context.channel.isActive { take(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        take(context)
        context.fireChannelActive()
    }

    /// The kernel's send buffer for a metrics connection: a few answers' worth, fixed (not grown by autotuning), so a
    /// client that pipelines requests without reading holds that much before the connection stops being read.
    static let sendBufferBytes = 128 * 1024

    private func take(_ context: ChannelHandlerContext) {
        guard !decided else { return }
        decided = true
        _ = context.channel.setOption(ChannelOptions.socketOption(.so_sndbuf), value: Self.sendBufferBytes)
        opened = true
        guard quota.open.add(1, ordering: .relaxed).newValue > ConnectionQuota.freeBelow else { return }
        guard let k = MetricsPeer.key(remote: context.channel.remoteAddress, local: context.channel.localAddress) else { return }
        if quota.admit(k) { key = k } else { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let k = key { quota.release(k); key = nil }
        if opened { quota.open.subtract(1, ordering: .relaxed); opened = false }
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if context.channel.isWritable { context.read() } else { readPending = true }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && readPending {
            readPending = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }
}

/// The owner of a TCP socket by its 4-tuple, asked of the kernel with one sock_diag request (NETLINK_SOCK_DIAG,
/// SOCK_DIAG_BY_FAMILY for that exact socket; linux/inet_diag.h): constant time however many sockets the host has,
/// where reading /proc/net/tcp costs a pass over all of them. nil where the kernel does not answer (then /proc).
enum SocketOwner {
    static func uid(client: (ip: String, port: Int), server: (ip: String, port: Int)) -> uid_t? {
        var c = in_addr(), s = in_addr()
        guard inet_pton(AF_INET, client.ip, &c) == 1, inet_pton(AF_INET, server.ip, &s) == 1 else { return nil }
        let fd = socket(AF_NETLINK, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4 /* NETLINK_SOCK_DIAG */)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // nlmsghdr (16 bytes) + inet_diag_req_v2 (56): family, protocol, ext, pad, states, then the socket's id as the
        // socket sees itself (source = the client's end).
        var req = [UInt8](repeating: 0, count: 72)
        func put32(_ v: UInt32, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { req[at + i] = b } } }
        func put16(_ v: UInt16, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { req[at + i] = b } } }
        put32(72, 0); put16(20 /* SOCK_DIAG_BY_FAMILY */, 4); put16(1 /* NLM_F_REQUEST */, 6); put32(1, 8)
        req[16] = UInt8(AF_INET); req[17] = UInt8(IPPROTO_TCP); put32(0xFFFF_FFFF, 20)
        // sport, dport (network order), src[4], dst[4], if, cookie[2] = INET_DIAG_NOCOOKIE.
        put16(UInt16(client.port).bigEndian, 24); put16(UInt16(server.port).bigEndian, 26)
        put32(c.s_addr, 28); put32(s.s_addr, 44)
        put32(0xFFFF_FFFF, 64); put32(0xFFFF_FFFF, 68)
        // c.s_addr is already in network order in memory; put32 writes its little-endian bytes, which are those bytes.
        guard req.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == 72 else { return nil }
        var reply = [UInt8](repeating: 0, count: 8192)
        let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        // nlmsghdr then inet_diag_msg: family, state, timer, retrans, id (48 bytes), expires, rqueue, wqueue, uid.
        guard n >= 16 + 68 else { return nil }
        let type = UInt16(reply[4]) | UInt16(reply[5]) << 8
        guard type == 20 else { return nil }
        let at = 16 + 64
        return uid_t(reply[at]) | uid_t(reply[at + 1]) << 8 | uid_t(reply[at + 2]) << 16 | uid_t(reply[at + 3]) << 24
    }
}
