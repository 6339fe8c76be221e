import Foundation

/// A raw HTTP exchange with 127.0.0.1:`port`, as a scraper or a misbehaving client would have it: sends `request`
/// (in `pieces` parts `pause` seconds apart, for slow clients), then reads one response (its headers and
/// Content-Length bytes of body) or until the server closes or `timeout` passes; with `untilClosed`, reads on until
/// the server closes (or `timeout`). Returns what came back and the seconds the whole exchange took.
public func httpExchange(port: Int, _ request: [UInt8], pieces: Int = 1, pause: Double = 0, timeout: Double = 15, untilClosed: Bool = false)
    -> (response: String, seconds: Double)
{
    let start = Date()
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return ("socket failed: errno \(errno)", 0) }
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = UInt16(port).bigEndian
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { return ("connect failed: errno \(errno)", 0) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    let chunk = max(1, (request.count + pieces - 1) / pieces)
    var sent = 0
    while sent < request.count {
        let n = request[sent..<min(request.count, sent + chunk)].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { break }
        sent += n
        if pause > 0 && sent < request.count { usleep(UInt32(pause * 1e6)) }
    }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while Date().timeIntervalSince(start) < timeout {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        out += buf[0..<n]
        // One response: done once its headers and Content-Length bytes of body are in (a server may keep the
        // connection open after it).
        if !untilClosed, let end = out.firstRange(of: Array("\r\n\r\n".utf8)) {
            let head = String(decoding: out[..<end.lowerBound], as: UTF8.self).lowercased()
            let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                .flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) }
            if let length, out.count - end.upperBound >= length { break }
        }
    }
    return (String(decoding: out, as: UTF8.self), Date().timeIntervalSince(start))
}

/// GET `path` over HTTP/1.0 on 127.0.0.1:`port`: the status (0 when nothing parsable came back), the body and the
/// seconds it took.
public func httpGet(port: Int, _ path: String, timeout: Double = 15) -> (status: Int, body: String, seconds: Double) {
    let r = httpExchange(port: port, Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8), timeout: timeout)
    let status = r.response.hasPrefix("HTTP/") ? Int(r.response.split(separator: " ").dropFirst().first ?? "") ?? 0 : 0
    let body = r.response.range(of: "\r\n\r\n").map { String(r.response[$0.upperBound...]) } ?? ""
    return (status, body, r.seconds)
}
