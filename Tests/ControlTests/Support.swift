@testable import Schema
import ControlProtocol
import ControlServer
import Foundation
import Testing
@_exported import TestSupport
import VMM

typealias Served = ServedVMM

extension ServedVMM {
    /// A 2-vCPU, 64 MiB VM changed by `tweak`, served on `path` (default: a fresh one).
    convenience init(path: String? = nil, options: ControlServer.Options = .init(), _ tweak: (inout VMMConfiguration) -> Void = { _ in }) throws {
        var c = VMMConfiguration()
        c.vcpus = 2
        c.ramSize = 64 << 20
        tweak(&c)
        try self.init(c, path: path, options: options)
    }
}

/// A plain line-oriented client: writes lines, reads lines, nothing else (as `socat` would).
final class LineClient {
    let conn: LineConnection
    var events: [JSON] = []

    init(_ path: String) throws { conn = try LineConnection(path: path) }

    func send(_ line: String) throws { try conn.send(line) }

    /// The next non-event message (events are kept in `events`).
    func reply(timeoutMs: Int32 = 10_000) throws -> JSON {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while true {
            let left = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            guard left > 0, var line = try conn.readLine(timeoutMs: left) else { throw SocketError("no reply within \(timeoutMs) ms") }
            let message = try JSON.parse(bytes: &line)
            if message["event"] != nil { events.append(message); continue }
            return message
        }
    }

    func call(_ line: String) throws -> JSON {
        try send(line)
        return try reply()
    }

    func negotiate() throws {
        _ = try reply()  // greeting
        let r = try call(#"{"execute":"qmp_capabilities"}"#)
        #expect(r == .object([("return", .object([]))]))
    }
}

func errorClass(_ reply: JSON) -> String? { reply["error"]?["class"]?.stringValue }
