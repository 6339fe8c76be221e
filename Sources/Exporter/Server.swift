import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle

/// `/metrics` over HTTP/1.1 (Hummingbird on SwiftNIO): the registry's text exposition on GET or HEAD; 404 for any
/// other path, 405 for another method on `/metrics`; requests whose headers pass 16 KiB are refused by the HTTP
/// decoder (431/400), idle connections are closed after 10 s, and an HTTP/1.0 request without keep-alive has its
/// connection closed once answered (`HTTPVersionKeepAlive`). Serving runs on NIO's event loop, apart from the
/// collector thread, so no client (slow, huge, or many at once; at most 64 connections, of which one other user
/// or one remote address holds at most 8) can stall a collection or another scrape; a client that pipelines
/// requests without reading the answers is not read further until it does.
public final class MetricsServer: Sendable {
    public let host: String
    /// The port bound (the one asked for, or the kernel's choice for 0).
    public let port: Int
    /// The server runs in a service group of its own (no signals: the command handles those), so that `stop()` is a
    /// graceful shutdown: cancelling its task instead made Hummingbird log an error on every normal exit.
    private let group: ServiceGroup

    /// The Prometheus exposition format's content type (text format 0.0.4).
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"
    public static let maxHeaderBytes = 16 * 1024
    public static let idleTimeout = TimeAmount.seconds(10)
    public static let maxConnections = 64
    /// Connections one other user (on loopback, by the socket's owner) or one remote address may hold at once;
    /// root and the exporter's own user are not limited. Beyond it a connection is closed at once.
    public static let connectionsPerPeer = 8
    private let quota: ConnectionQuota
    /// Connections closed for being beyond their peer's share.
    public var connectionsRefused: UInt64 { quota.refusedTotal }

    /// Binds `host:port` and serves until `stop()`; throws when the address cannot be bound.
    public init(host: String, port: Int, store: MetricsStore, logger: Logger) throws {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: Self.contentType], body: .init(byteBuffer: ByteBuffer(bytes: store.exposition())))
        }
        router.head("/metrics") { _, _ -> Response in
            // HEAD says the length GET's body would have (it said 0).
            Response(status: .ok, headers: [.contentType: Self.contentType, .contentLength: String(store.exposition().count)])
        }
        for method in [HTTPRequest.Method.post, .put, .delete, .patch, .options, .trace] {
            router.on("/metrics", method: method) { _, _ -> Response in
                Response(status: .methodNotAllowed, headers: [.allow: "GET, HEAD"])
            }
        }
        router.get("/") { _, _ -> String in
            "vmscope exporter: the metrics are at /metrics\n"
        }
        let decoder = HTTP1Channel.Configuration.DecoderConfiguration(maxHeaderFieldSize: Self.maxHeaderBytes,
                                                                      maxHeaderListSize: Self.maxHeaderBytes, maxHeaderFieldCount: 100)
        let quota = ConnectionQuota(perPeer: Self.connectionsPerPeer, logger: logger)
        self.quota = quota
        let bound = Promise()
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        let app = Application(
            router: router,
            server: .http1(configuration: .init(additionalChannelHandlers: [ConnectionGuard(quota: quota)], idleTimeout: Self.idleTimeout,
                                                httpDecoderConfiguration: decoder)),
            configuration: .init(address: .hostname(host, port: port), serverName: "vmscope",
                                 availableConnectionsDelegate: MaximumAvailableConnections(Self.maxConnections)),
            onServerRunning: { channel in bound.fulfil(.success(channel.localAddress?.port ?? port)) },
            logger: quiet)
        let group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: quiet))
        self.group = group
        Task {
            do { try await group.run() } catch { bound.fulfil(.failure(error)) }
        }
        self.host = host
        switch bound.wait(seconds: 10) {
        case .success(let p)?: self.port = p
        case .failure(let e)?: throw MetricsError("cannot serve metrics on \(host):\(port): \(e)")
        case nil:
            let group = group
            Task { await group.triggerGracefulShutdown() }
            throw MetricsError("cannot serve metrics on \(host):\(port): the server did not start within 10 s")
        }
    }

    public func stop() {
        let group = group
        Task { await group.triggerGracefulShutdown() }
    }

    /// A one-shot result handed from NIO's task to the thread that waits for it.
    private final class Promise: @unchecked Sendable {
        // @unchecked: guarded by `cond`.
        private let cond = NSCondition()
        private var result: Result<Int, any Error>?
        func fulfil(_ r: Result<Int, any Error>) {
            cond.lock(); defer { cond.unlock() }
            if result == nil { result = r; cond.broadcast() }
        }
        func wait(seconds: Double) -> Result<Int, any Error>? {
            let deadline = Date().addingTimeInterval(seconds)
            cond.lock(); defer { cond.unlock() }
            while result == nil { if !cond.wait(until: deadline) { break } }
            return result
        }
    }
}

/// A metrics endpoint that could not be set up, or an address that does not parse.
public struct MetricsError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// `ADDR:PORT` (`127.0.0.1:9100`, `[::1]:9100`, `:9100` = loopback): host and port, or a message naming the mistake.
public func parseListenAddress(_ text: String) throws(MetricsError) -> (host: String, port: Int) {
    let host: String, portText: Substring
    if text.hasPrefix("[") {
        guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
            throw MetricsError("\(text): expected [IPv6]:PORT")
        }
        host = String(text[text.index(after: text.startIndex)..<close])
        portText = text[text.index(close, offsetBy: 2)...]
    } else {
        guard let colon = text.lastIndex(of: ":") else { throw MetricsError("\(text): expected ADDR:PORT, e.g. 127.0.0.1:9100") }
        host = text[..<colon].isEmpty ? "127.0.0.1" : String(text[..<colon])
        portText = text[text.index(after: colon)...]
    }
    guard let port = Int(portText), (0...65535).contains(port) else { throw MetricsError("\(text): the port must be 0 to 65535") }
    guard !host.isEmpty, !host.contains(where: { $0.isWhitespace || $0 == "/" }) else { throw MetricsError("\(text): no address before the port") }
    return (host, port)
}
