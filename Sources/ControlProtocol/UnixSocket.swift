#if canImport(Glibc)
import Glibc
#endif
import struct SystemPackage.Errno

/// A failed socket operation, with the call and errno named.
public struct SocketError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// The errno of the call that failed; nil for a refusal of vmscope's own (a path too long, a peer's uid).
    public var errno: Errno?
    public init(_ description: String, errno: Errno? = nil) { self.description = description; self.errno = errno }
    static func errno(_ call: String, _ e: Int32 = Glibc.errno) -> SocketError {
        SocketError("\(call): \(String(cString: strerror(e)))", errno: Errno(rawValue: e))
    }
}

func makeAddress(_ path: String) throws(SocketError) -> sockaddr_un {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard !bytes.isEmpty, bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
        throw SocketError("socket path must be 1 to \(MemoryLayout.size(ofValue: addr.sun_path) - 1) bytes: \(path)")
    }
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return addr
}

/// A stream socket connected to `addr` (blocking unless `nonBlocking`), or which call failed (`socket` or
/// `connect`) and its errno.
func connectedSocket(_ addr: inout sockaddr_un, nonBlocking: Bool = false) -> Result<Int32, ConnectFailure> {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0), 0)
    guard fd >= 0 else { return .failure(ConnectFailure(call: "socket", errno: errno)) }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0 else {
        let e = errno
        close(fd)
        return .failure(ConnectFailure(call: "connect", errno: e))
    }
    return .success(fd)
}

/// A blocking stream socket connected to the Unix socket at `path`, as a bare descriptor the caller owns.
public func connectUnixSocket(path: String) throws(SocketError) -> Int32 {
    var addr = try makeAddress(path)
    switch connectedSocket(&addr) {
    case .success(let fd): return fd
    case .failure(let e): throw .errno(e.call == "socket" ? "socket" : "connect \(path)", e.errno)
    }
}

struct ConnectFailure: Error {
    var call: String
    var errno: Int32
}

/// The control socket's listening end: created mode 0600, removed on `remove()`. Never over an existing file,
/// except a stale socket: one nobody listens on any more (a VMM that was killed leaves it), which is replaced.
public final class UnixListener: @unchecked Sendable {
    // @unchecked: immutable after init; `remove` is called once by the owner.
    public let path: String
    public let fd: Int32
    /// Whether a stale socket (nobody listening) was at `path` and was replaced.
    public private(set) var staleReplaced = false

    /// 0 when something accepts a connection on `addr`, else the connect errno. Non-blocking: a live listener
    /// whose backlog is full answers EAGAIN at once (a blocking connect would wait for it to accept, forever if
    /// it is stuck).
    private static func probe(_ addr: inout sockaddr_un) -> Int32 {
        switch connectedSocket(&addr, nonBlocking: true) {
        case .success(let fd): close(fd); return 0
        case .failure(let e): return e.errno
        }
    }

    /// Whether `path` is a socket nobody listens on (true), one somebody serves (false), or no socket (nil).
    public static func isStale(path: String) -> Bool? {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK, var addr = try? makeAddress(path) else { return nil }
        return probe(&addr) == ECONNREFUSED
    }

    public init(path: String) throws(SocketError) {
        self.path = path
        var addr = try makeAddress(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else {
                throw SocketError("\(path) already exists and is not a socket; choose another path")
            }
            switch Self.probe(&addr) {
            case ECONNREFUSED:
                // Nobody listens: what a killed VMM leaves behind.
                guard unlink(path) == 0 else { throw .errno("unlink the stale socket \(path)") }
                staleReplaced = true
            case 0:
                throw SocketError("\(path) is in use: another VMM is serving it")
            case EAGAIN:
                throw SocketError("\(path) is in use: a process listens on it but is not accepting (its backlog is full)")
            case let e:
                throw SocketError("\(path) already exists and cannot be probed (\(String(cString: strerror(e)))); remove it if no VMM uses it")
            }
        }
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .errno("socket") }
        // Bound and listening under a private name first, then linked to `path` (link fails if the path was taken
        // meanwhile): a client never finds the path before it accepts (a connect between bind and listen is refused,
        // which a demo on a loaded machine once met). Where the private name would not fit sun_path, `path` itself.
        let temp = path + ".\(getpid()).new"
        var bindAddr = (try? makeAddress(temp)) ?? addr
        let bound = (try? makeAddress(temp)) != nil ? temp : path
        unlink(temp)
        let old = umask(0o177)
        let rc = withUnsafePointer(to: &bindAddr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let e = errno
        umask(old)
        guard rc == 0 else {
            close(fd)
            throw .errno("bind \(bound)", e)
        }
        chmod(bound, 0o600)
        guard listen(fd, 64) == 0 else {
            let e = errno
            close(fd)
            unlink(bound)
            throw .errno("listen \(bound)", e)
        }
        if bound != path {
            let linked = link(bound, path), e = errno
            unlink(bound)
            guard linked == 0 else {
                close(fd)
                throw e == EEXIST ? SocketError("\(path) is in use: another VMM created it while this one started") : .errno("link \(path)", e)
            }
        }
    }

    /// A pending connection (non-blocking, close-on-exec), or nil when none is waiting.
    public func accept() -> Int32? {
        let c = Glibc.accept(fd, nil, nil)
        guard c >= 0 else { return nil }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
        return c
    }

    /// The path first, then the socket: a client never finds the path without a listener behind it.
    public func remove() {
        unlink(path)
        close(fd)
    }
}

/// The uid and pid at the other end of a Unix socket (`SO_PEERCRED`).
public func peerCredentials(_ fd: Int32) -> (uid: uid_t, pid: pid_t)? {
    // struct ucred { pid_t pid; uid_t uid; gid_t gid; } (Glibc hides it behind _GNU_SOURCE).
    var cred: (Int32, UInt32, UInt32) = (0, 0, 0)
    var len = socklen_t(MemoryLayout.size(ofValue: cred))
    guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else { return nil }
    return (cred.1, cred.0)
}

/// A blocking client connection that reads and writes whole lines.
public final class LineConnection: @unchecked Sendable {
    // @unchecked: one reader and one writer at a time (the client serialises them).
    public let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    /// Longest line accepted from the peer.
    public let maxLine: Int

    public init(path: String, maxLine: Int = 64 << 20) throws(SocketError) {
        fd = try connectUnixSocket(path: path)
        self.maxLine = maxLine
    }

    deinit { close(fd) }

    /// Shuts both directions down (a blocked `readLine` returns nil).
    public func shutdown() { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }

    public func send(_ line: String) throws(SocketError) {
        try sendBytes(Array(line.utf8) + [0x0A])
    }

    public func sendBytes(_ bytes: [UInt8]) throws(SocketError) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .errno("send")
            }
            sent += n
        }
    }

    /// Whatever bytes arrive next: empty after `timeoutMs` (-1: wait forever), nil at end of stream.
    public func readChunk(timeoutMs: Int32) throws(SocketError) -> [UInt8]? {
        if start < buffer.count {
            let rest = Array(buffer[start...])
            buffer.removeAll()
            start = 0
            return rest
        }
        while true {
            if timeoutMs >= 0 {
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let r = poll(&p, 1, timeoutMs)
                if r == 0 { return [] }
                if r < 0 { if errno == EINTR { continue }; throw .errno("poll") }
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .errno("recv")
            }
            if n == 0 { return nil }
            return Array(chunk[0..<n])
        }
    }

    /// The next line without its newline; nil at end of stream or after `timeoutMs` (-1: wait forever).
    public func readLine(timeoutMs: Int32 = -1) throws(SocketError) -> [UInt8]? {
        while true {
            if let nl = buffer[start...].firstIndex(of: 0x0A) {
                let line = Array(buffer[start..<nl])
                start = nl + 1
                if start == buffer.count || (start > 65536 && start * 2 > buffer.count) {
                    buffer.removeFirst(start)
                    start = 0
                }
                return line
            }
            guard buffer.count - start <= maxLine else { throw SocketError("line longer than \(maxLine) bytes from the peer") }
            let pending = Array(buffer[start...])
            buffer.removeAll()
            start = 0
            guard let chunk = try readChunk(timeoutMs: timeoutMs), !chunk.isEmpty else {
                buffer = pending
                return nil
            }
            buffer = pending + chunk
        }
    }
}
