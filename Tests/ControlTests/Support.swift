import ControlProtocol
import ControlServer
import Foundation
import Testing
@_exported import TestSupport
import VMM

/// A reference VMM with its control server on a fresh socket path.
final class Served {
    let vmm: ReferenceVMM
    let server: ControlServer
    let listener: UnixListener
    let path: String

    init(path: String? = nil, options: ControlServer.Options = .init(), _ tweak: (inout VMMConfiguration) -> Void = { _ in }) throws {
        var c = VMMConfiguration()
        c.vcpus = 2
        c.ramSize = 64 << 20
        tweak(&c)
        vmm = try ReferenceVMM(c)
        self.path = path ?? NSTemporaryDirectory() + "vmscope-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        listener = try UnixListener(path: self.path)
        server = ControlServer(vmm: vmm, listener: listener, options: options)
        server.start()
        vmm.start()
    }

    func stop() {
        server.stop()
        vmm.stop()
        listener.remove()
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
