@testable import Schema
import ControlProtocol
import Foundation

/// A QMP server that misbehaves on cue, for running vmscope's clients (`attach`, `snapshot`, `record`, `ctl`)
/// against it. Most cues sit in front of a real `vmscope vmm` as a proxy and rewrite what it sends, so the
/// session is a real one with the numbers a hostile or broken server would put in it.
final class HostileServer: @unchecked Sendable {
    enum Cue: String, CaseIterable, Sendable {
        /// After the greeting and negotiation: one line that never ends.
        case endlessLine
        /// After the greeting: text that is not JSON.
        case garbageAfterGreeting
        /// Thousands of replies to ids nobody sent, and events the size of a megabyte, as fast as it can.
        case flood
        /// `shared-alias`, vCPU counts, sizes and indices negative.
        case negativeFields
        /// Every gpa near 2^64, so gpa + size wraps.
        case wrappingRanges
        /// Sizes, exit counts, dropped counts and totals at 2^64 - 1, so any sum overflows.
        case overflowingCounts
        /// Timestamps and `time-ns` at 2^64 - 1 (and seconds past any calendar).
        case timestampsNearMax
    }

    let path: String
    let cue: Cue
    let upstream: String?
    private let listener: UnixListener
    private let stopped = NSLock()
    private var isStopped = false
    private let acceptDone = DispatchSemaphore(value: 0)

    init(cue: Cue, path: String, upstream: String?) throws {
        self.cue = cue
        self.path = path
        self.upstream = upstream
        listener = try UnixListener(path: path)
        Thread { [self] in acceptLoop() }.start()
    }

    /// Stops accepting (the listener's fd is closed only after the accepting thread is gone, so a later server
    /// that gets the same fd number is not served by this one).
    func stop() {
        stopped.lock(); isStopped = true; stopped.unlock()
        acceptDone.wait()
        listener.remove()
    }

    private var stopping: Bool { stopped.lock(); defer { stopped.unlock() }; return isStopped }

    private func acceptLoop() {
        while !stopping {
            var p = pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0, let fd = listener.accept() else { continue }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            Thread { [self] in serve(fd) }.start()
        }
        acceptDone.signal()
    }

    static let greeting = #"{"QMP":{"version":{"qemu":{"major":0,"minor":1,"micro":0},"package":"vmscope 0.1.0"},"capabilities":[]},"vmscope":{"protocol":1}}"#

    private func send(_ fd: Int32, _ bytes: [UInt8]) -> Bool { sendAll(fd, bytes) }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        switch cue {
        case .endlessLine:
            guard send(fd, Array((Self.greeting + "\n").utf8)) else { return }
            _ = answerNegotiation(fd)
            _ = send(fd, Array(#"{"return":{"name":""#.utf8))
            let chunk = [UInt8](repeating: UInt8(ascii: "y"), count: 1 << 20)
            for _ in 0..<(1 << 12) where !stopping && send(fd, chunk) {}  // up to 4 GiB
        case .garbageAfterGreeting:
            _ = send(fd, Array((Self.greeting + "\nthis is not JSON {{{\n").utf8))
            usleep(3_000_000)
        case .flood:
            guard send(fd, Array((Self.greeting + "\n").utf8)) else { return }
            _ = answerNegotiation(fd)
            let big = #"{"event":"GUEST_REPORT","data":{"vcpu":0,"kind":"heartbeat","value":1,"pad":""# + String(repeating: "z", count: 1 << 20) + "\"}}\n"
            var i = 0
            while !stopping {
                let line = i % 16 == 0 ? big : #"{"return":{},"id":"not-yours-\#(i)"}"# + "\n"
                guard send(fd, Array(line.utf8)) else { return }
                i += 1
            }
        default:
            proxy(fd)
        }
    }

    /// Reads the client's first message and says yes to it.
    private func answerNegotiation(_ fd: Int32) -> Bool {
        let lines = FileHandleLines(fd)
        guard var line = lines.next(), let id = (try? JSON.parse(bytes: &line))?["id"] else { return false }
        return send(fd, Array(JSON.object([("return", .object([])), ("id", id)]).serialized.utf8) + [0x0A])
    }

    private func proxy(_ fd: Int32) {
        guard let upstream, let up = try? connectUnixSocket(path: upstream) else { return }
        defer { close(up) }
        // Client → VMM as it comes; VMM → client a line at a time, rewritten.
        Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
                if n <= 0 || !send(up, Array(buf[0..<n])) { shutdown(up, Int32(SHUT_RDWR)); return }
            }
        }.start()
        let conn = FileHandleLines(up)
        while let line = conn.next() {
            var bytes = line
            guard let message = try? JSON.parse(bytes: &bytes) else { return }
            let out = Self.rewrite(message, cue)
            guard send(fd, Array(out.serialized.utf8) + [0x0A]) else { return }
        }
        shutdown(fd, Int32(SHUT_RDWR))
    }

    static let max64 = JSON.uint(UInt64.max)

    /// The server's message with the cue's numbers put in.
    static func rewrite(_ j: JSON, _ cue: Cue, member: String? = nil) -> JSON {
        switch j {
        case .object(let members):
            if member == "exit-counts" || member == "stats", cue == .overflowingCounts {
                return .object(members.map { ($0.0, max64) })
            }
            return .object(members.map { ($0.0, replacement($0.0, $0.1, cue) ?? rewrite($0.1, cue, member: $0.0)) })
        case .array(let a):
            return .array(a.map { rewrite($0, cue, member: member) })
        default:
            return j
        }
    }

    static func replacement(_ name: String, _ value: JSON, _ cue: Cue) -> JSON? {
        switch value {
        case .int, .uint: break
        default: return nil
        }
        switch cue {
        case .negativeFields:
            return ["shared-alias", "vcpus", "size", "ram-size", "index", "vcpu", "slot", "count", "seq", "generation"].contains(name) ? .int(-1) : nil
        case .wrappingRanges:
            return ["gpa", "guest-memfd-offset", "userspace-addr"].contains(name) ? .uint(UInt64.max - 4095) : name == "size" ? .uint(1 << 40) : nil
        case .overflowingCounts:
            return ["size", "dropped", "total", "count", "ram-size", "private-bytes", "shared-bytes", "seq", "value"].contains(name) ? max64 : nil
        case .timestampsNearMax:
            return ["seconds", "microseconds", "time-ns", "duration-ns"].contains(name) ? max64 : nil
        default:
            return nil
        }
    }
}

/// Newline-terminated lines from a blocking socket.
final class FileHandleLines {
    let fd: Int32
    var buffer: [UInt8] = []
    init(_ fd: Int32) { self.fd = fd }
    func next() -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = Array(buffer[..<nl])
                buffer.removeFirst(nl + 1)
                return line
            }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
    }
}
