@testable import Schema
import ControlProtocol
import Foundation
import ProcessSupport
import Synchronization
import Testing
import TestSupport

/// Sends everything on a blocking socket; false when the peer closed.
func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    var sent = 0
    while sent < bytes.count {
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
        if n < 0 { if errno == EINTR { continue }; return false }
        sent += n
    }
    return true
}

/// A connection that sends raw bytes and reads only when told: what a hostile or broken client does.
final class RawClient: @unchecked Sendable {
    let fd: Int32
    init(_ path: String) throws { fd = try connectUnixSocket(path: path) }
    deinit { close(fd) }

    /// Sends everything (blocking while the server does not read); false when the server closed.
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool { sendAll(fd, bytes) }

    /// Everything until end of stream, or until `seconds` passed.
    func readToEnd(seconds: Double) -> (bytes: [UInt8], ended: Bool) {
        var out: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        var chunk = [UInt8](repeating: 0, count: 65536)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, 65536, 0) }
            if n <= 0 { return (out, n == 0) }
            out += chunk[0..<n]
        }
        return (out, false)
    }
}

/// The largest resident size a process reached while sampled (every 10 ms, on a thread of its own).
final class PeakRSS: @unchecked Sendable {
    private let peak = Atomic<UInt64>(0)
    private let running = Atomic<Bool>(true)
    private let pid: Int32
    init(pid: Int32) {
        self.pid = pid
        Thread { [self] in sample() }.start()
    }
    private func sample() {
        while running.load(ordering: .relaxed) {
            let r = residentBytes(pid: pid) ?? 0
            if r > peak.load(ordering: .relaxed) { peak.store(r, ordering: .relaxed) }
            usleep(10_000)
        }
    }
    func stop() -> UInt64 { running.store(false, ordering: .relaxed); usleep(20_000); return peak.load(ordering: .relaxed) }
}

/// Each pattern a hostile client tried (issue 19), against `vmscope vmm` as a separate process so its memory can
/// be measured: another client's `query-vm` is answered within 500 ms, nothing is lost, memory stays within the
/// bound docs/reliability.md states.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct HostileClientTests {
    let dir = makeTestDirectory("hc")

    static let negotiate = Array(#"{"execute":"qmp_capabilities"}"#.utf8) + [0x0A]

    static func lines(_ text: String, _ n: Int) -> [UInt8] {
        Array(String(repeating: text + "\n", count: n).utf8)
    }

    /// `count` `command`s from a well-behaved client, `pauseMs` apart: each one's latency in ms.
    static func victim(_ socket: String, count: Int, command: String = "query-vm", pauseMs: UInt32 = 50,
                       timeoutMs: Int32 = 5000) throws -> [Double] {
        let c = try ControlClient(path: socket, timeoutMs: timeoutMs)
        defer { c.close() }
        var out: [Double] = []
        for _ in 0..<count {
            let t = Date()
            _ = try c.execute(command)
            out.append(Date().timeIntervalSince(t) * 1000)
            usleep(pauseMs * 1000)
        }
        return out
    }

    /// Sends `bytes` on a thread of its own (the send blocks while the server holds back).
    static func sendInBackground(_ c: RawClient, _ bytes: [UInt8]) -> Thread {
        let t = Thread { c.send(bytes) }
        t.start()
        return t
    }

    @Test func aBurstOfSlowCommandsDoesNotStarveAnotherClientAndLosesNothing() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, ["--vcpus", "4"], log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        usleep(500_000)  // some fault records, so query-memory-faults has something to say
        let baseline = (residentBytes(pid: vmm.pid) ?? 0)
        let rss = PeakRSS(pid: vmm.pid)
        let burst = Self.negotiate + Self.lines(#"{"execute":"query-vcpus"}"#, 600)
            + Self.lines(#"{"execute":"query-memory-faults","arguments":{"limit":4096}}"#, 100)
        // One hostile client reads everything (slowly), one never reads.
        let reader = try RawClient(socket), stuck = try RawClient(socket)
        _ = Self.sendInBackground(stuck, burst)
        _ = Self.sendInBackground(reader, burst)
        let received = Mutex<[UInt8]>([])
        let readerThread = Thread {
            var chunk = [UInt8](repeating: 0, count: 16384)
            while true {
                let n = chunk.withUnsafeMutableBytes { recv(reader.fd, $0.baseAddress, 16384, 0) }
                if n <= 0 { return }
                received.withLock { $0 += chunk[0..<n] }
                usleep(200)
            }
        }
        readerThread.start()
        usleep(100_000)
        let latencies = try Self.victim(socket, count: 30)
        print("query-vm beside a burst: max \(Int(latencies.max()!)) ms, median \(Int(latencies.sorted()[15])) ms")
        #expect(latencies.max()! < 500, "\(latencies.map { Int($0) })")
        // Every command of the reading client is answered.
        #expect(eventuallyTrue(60) {
            received.withLock { r in r.split(separator: 0x0A).count(where: { $0.starts(with: Array(#"{"return""#.utf8)) }) } == 701
        }, "replies: \(received.withLock { $0.split(separator: 0x0A).count })")
        let peak = rss.stop()
        // What the clients held goes back to the system when they go (it stayed in malloc's heap: +5 MiB).
        shutdown(reader.fd, Int32(SHUT_RDWR))
        shutdown(stuck.fd, Int32(SHUT_RDWR))
        var after = UInt64.max
        _ = eventuallyTrue(5) { after = residentBytes(pid: vmm.pid) ?? .max; return after <= baseline + (3 << 20) }
        print("VMM RSS: \(baseline >> 20) MiB before, peak \(peak >> 20) MiB, \(after >> 20) MiB once the clients went")
        #expect(peak <= baseline + (16 << 20), "peak \(peak >> 20) MiB over \(baseline >> 20) MiB")
        #expect(after <= baseline + (3 << 20), "\(after >> 20) MiB once the clients went, \(baseline >> 20) MiB before")
    }

    @Test func aHalfClosedClientGetsEveryReply() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, ["--allow-mutations"], log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        // What `printf ... | socat - UNIX-CONNECT:` does: everything, then EOF on the write side.
        var input = Self.negotiate
        for i in 0..<200 { input += Array(#"{"execute":"query-vm","id":\#(i)}"#.utf8) + [0x0A] }
        input += Array(#"{"execute":"set-memory-attributes","arguments":{"gpa":33554432,"size":4096,"private":false},"id":"conv"}"#.utf8) + [0x0A]
        input += Array(#"{"execute":"query-version","id":"last"}"#.utf8)  // no newline: the stream's end ends it
        let c = try RawClient(socket)
        #expect(c.send(input))
        shutdown(c.fd, Int32(SHUT_WR))
        let (bytes, ended) = c.readToEnd(seconds: 20)
        #expect(ended, "the VMM closes the connection once every reply is sent")
        var ids: [JSON] = []
        for var line in bytes.split(separator: 0x0A).map(Array.init) {
            let m = try JSON.parse(bytes: &line)
            if m["return"] != nil, let id = m["id"] { ids.append(id) }
        }
        #expect(ids == (0..<200).map { JSON.int(Int64($0)) } + [.string("conv"), .string("last")])
        let log = try String(contentsOfFile: dir + "/vmm.log", encoding: .utf8)
        #expect(log.contains("set-memory-attributes") && log.contains("outcome=done"), "the conversion is audited once")
    }

    @Test func anEndlessLineAndManyStuckConnectionsStayWithinTheBound() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, ["--vcpus", "2"], log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        usleep(500_000)
        let baseline = (residentBytes(pid: vmm.pid) ?? 0)
        let rss = PeakRSS(pid: vmm.pid)
        // 48 clients that never read, each with a burst of large replies ...
        var held: [RawClient] = []
        let burst = Self.negotiate + Self.lines(#"{"execute":"query-memory-faults","arguments":{"limit":4096}}"#, 200)
            + Self.lines(#"{"execute":"query-vcpus"}"#, 200)
        for _ in 0..<48 {
            let c = try RawClient(socket)
            held.append(c)
            _ = Self.sendInBackground(c, burst)
        }
        // ... and one sending 256 MiB without a newline.
        let endless = try RawClient(socket)
        held.append(endless)
        let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
        let endlessThread = Thread {
            _ = endless.send(Array(#"{"execute":"query-vm","id":""#.utf8))
            for _ in 0..<256 where endless.send(chunk) {}
        }
        endlessThread.start()
        usleep(2_000_000)
        let latencies = try Self.victim(socket, count: 20)
        print("query-vm beside 48 stuck clients and an endless line: \(latencies.map { Int($0) }) ms")
        #expect(latencies.max()! < 500, "\(latencies.map { Int($0) })")
        let peak = rss.stop()
        // docs/reliability.md: 32 MiB of unread output in all, plus per client one reply (≤ 1.3 MiB), one message
        // being framed (≤ 1 MiB) and one read (64 KiB): 49 clients, ≤ 150 MiB.
        print("VMM RSS: \(baseline >> 20) MiB before, peak \(peak >> 20) MiB with 49 hostile clients")
        #expect(peak <= baseline + (150 << 20), "peak \(peak >> 20) MiB over \(baseline >> 20) MiB")
        // Up to 64 clients are served; the 65th is told why it is refused.
        for _ in held.count..<64 { held.append(try RawClient(socket)) }
        let extra = try RawClient(socket)
        let (refusal, ended) = extra.readToEnd(seconds: 5)
        #expect(ended && String(decoding: refusal, as: UTF8.self).contains("serves 64 clients at once"))
        held.forEach { shutdown($0.fd, Int32(SHUT_RDWR)) }
    }

    /// After the messages that used to hold the server thread for seconds (an object of 20,000 members, 1 MiB in
    /// 4 KiB lines), another client is answered within 500 ms and SIGTERM stops the VMM within 1 s.
    @Test func hugeMessagesCostLinearTimeAndSIGTERMStillStopsTheVMMAtOnce() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        let members = (0..<20_000).map { "\"m\($0)\":\($0)" }.joined(separator: ",")
        let wide = Array(#"{"execute":"query-vm","arguments":{"#.utf8) + Array(members.utf8) + Array("}}\n".utf8)
        let tall = Array(#"{"execute":"query-vm","id":["#.utf8)
            + Array(String(repeating: "\"" + String(repeating: "y", count: 4090) + "\",\n", count: 256).utf8) + Array("1]}\n".utf8)
        let c = try RawClient(socket)
        _ = Self.sendInBackground(c, Self.negotiate + wide + tall + wide + tall)
        usleep(100_000)
        let latencies = try Self.victim(socket, count: 10)
        #expect(latencies.max()! < 500, "\(latencies.map { Int($0) })")
        let started = Date()
        vmm.signal(SIGTERM)
        let status = vmm.wait(seconds: 5)
        let took = Date().timeIntervalSince(started)
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket is removed")
        // Within 1 s; on a machine so loaded that an idle VMM takes long to exit too (a lab booting beside it, CI
        // once measured 1.09 s), within 3 times what that takes, measured now. Held by the messages it took seconds.
        var baseline = 0.0
        if took >= 1 {
            let idleSocket = dir + "/idle.sock"
            let idle = try startVMM(idleSocket, log: dir + "/idle.log")
            usleep(300_000)
            let t = Date()
            idle.signal(SIGTERM)
            _ = idle.wait(seconds: 5)
            baseline = Date().timeIntervalSince(t)
        }
        print("SIGTERM after huge messages: exit \(status ?? -1) in \(Int(took * 1000)) ms" + (took >= 1 ? "; an idle VMM's: \(Int(baseline * 1000)) ms" : ""))
        #expect(status != nil && (took < 1 || took < 3 * baseline), "\(took) s (an idle VMM: \(baseline) s)")
    }
}
