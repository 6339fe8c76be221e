@testable import Schema
import ControlProtocol
import Foundation
import ProcessSupport
import Testing

/// Every numeric argument of every command at the edges of its range (issue 28, class 1): a client gets a reply
/// to each (a result or an error naming the argument), and the VMM and its guest live on. Run against a VMM that
/// allows nothing (what any read-only client can reach) and one that allows everything (the most code behind
/// each number). A trap shows as the VMM gone and the replies missing.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct NumericArgumentTests {
    /// 0, 1, a page, max, max−1, the largest page-aligned value, Int64's edges, negatives, fractions, past UInt64.
    static let edges = ["0", "1", "4096", "18446744073709551615", "18446744073709551614", "18446744073709547520",
                        "9223372036854775807", "9223372036854775808", "-1", "-4096", "-9223372036854775808", "1.5",
                        "-0.5", "4096.0", "1e300", "18446744073709551616"]

    /// Each command's numeric members, and the other members it needs (the wire's own spelling).
    static let commands: [(name: String, numbers: [String], fixed: String)] = [
        ("query-memory-attributes", ["gpa", "size"], ""),
        ("query-memory-faults", ["limit"], ""),
        ("query-snapshot", ["faults"], ""),
        ("query-metrics", ["conversion-times-after"], ""),
        ("read-memory", ["gpa", "size"], ""),
        ("read-memory", ["gpa", "size"], #""view":"shared""#),
        ("read-memory", ["gpa", "size"], #""view":"private""#),
        ("set-memory-attributes", ["gpa", "size"], #""private":false"#),
        ("set-memory-attributes", ["gpa", "size"], #""private":true,"discard":false"#),
        ("vcpu-control", ["index"], #""action":"step""#),
        ("inject-fault", ["vcpu", "gpa", "size"], #""kind":"nmi""#),
        ("inject-fault", ["vcpu", "gpa", "size"], #""kind":"mce""#),
        ("inject-fault", ["vcpu", "gpa", "size"], #""kind":"discard""#),
        ("inject-fault", ["vcpu", "gpa", "size"], #""kind":"revoke""#),
        ("inject-fault", ["vcpu", "gpa", "size"], #""kind":"flip""#),
    ]

    /// Every request: each member alone at each edge, and every pair of members at every pair of edges.
    static func requests() -> [String] {
        var out: [String] = []
        for c in commands {
            func line(_ members: [(String, String)]) -> String {
                let args = (members.map { "\"\($0.0)\":\($0.1)" } + (c.fixed.isEmpty ? [] : [c.fixed])).joined(separator: ",")
                return #"{"execute":"\#(c.name)","arguments":{\#(args)},"id":\#(out.count)}"#
            }
            for m in c.numbers { for v in edges { out.append(line([(m, v)])) } }
            for (i, a) in c.numbers.enumerated() {
                for b in c.numbers[(i + 1)...] {
                    for va in edges { for vb in edges { out.append(line([(a, va), (b, vb)])) } }
                }
            }
        }
        return out
    }

    func hammer(_ flags: [String]) throws {
        let base = NSTemporaryDirectory() + "vmscope-numbers-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        // Its audit log (a line per refusal) goes to a file: a pipe nobody reads would stop it after 64 KiB.
        let vmm = try startVMM(base + ".sock", flags, log: base + ".log")
        defer { _ = vmm.terminate(grace: 10); unlink(base + ".log") }
        let c = try ControlClient(path: base + ".sock", timeoutMs: 20_000)
        defer { c.close() }
        // The requests go raw (numbers no typed command could hold), one at a time, each reply read by its id.
        let raw = try RawLines(base + ".sock")
        let requests = Self.requests()
        var answered = 0
        for (i, r) in requests.enumerated() {
            guard let reply = raw.call(r, id: i) else {
                Issue.record("no reply to \(r); the VMM is \(vmm.isRunning ? "running" : "gone")")
                return
            }
            #expect(reply["return"] != nil || reply["error"]?["desc"]?.stringValue?.isEmpty == false, "\(r) → \(reply.serialized)")
            #expect(reply["id"]?.intValue == i)
            answered += 1
        }
        #expect(answered == requests.count)
        #expect(vmm.isRunning, "the VMM died")
        #expect((try? c.execute("query-vm"))?["pid"]?.intValue == Int(vmm.pid), "the VMM answers")
        // Where nothing is allowed nothing could stop the guest: its heartbeat still moves. (Where everything is
        // allowed, `step`, `mce` and `revoke` may well have stopped it, as asked.)
        guard flags.isEmpty else {
            print("NumericArgumentTests \(flags): \(answered) requests answered, the VMM alive")
            return
        }
        let beat = { (try? c.execute("query-vcpus"))?.arrayValue?.compactMap { $0["guest"]?["heartbeat"]?.uint64Value }.reduce(0, +) ?? 0 }
        let before = beat()
        #expect(eventuallyTrue(10) { beat() > before }, "the guest's heartbeat stopped")
        print("NumericArgumentTests \(flags): \(answered) requests answered, the VMM\(flags.isEmpty ? " and its guest" : "") alive")
    }

    @Test func aReadOnlyClientCannotKillTheVMM() throws { try hammer([]) }

    @Test func noNumberTrapsWhereEverythingIsAllowed() throws {
        try hammer(["--allow-mutations", "--allow-fault-injection"])
    }
}

/// A negotiated connection that sends raw lines and reads the reply carrying a given id (events skipped).
final class RawLines {
    let client: RawClient
    private var buffer: [UInt8] = []

    init(_ path: String) throws {
        client = try RawClient(path)
        _ = nextLine(seconds: 10)   // the greeting
        client.send(Array(#"{"execute":"qmp_capabilities"}"#.utf8) + [10])
        _ = nextLine(seconds: 10)
    }

    private func nextLine(seconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let nl = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeFirst(nl + 1)
                return line
            }
            let left = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            guard left > 0 else { return nil }
            var p = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, left) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { recv(client.fd, $0.baseAddress, 65536, 0) }
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
    }

    func call(_ line: String, id: Int, seconds: Double = 20) -> JSON? {
        guard client.send(Array(line.utf8) + [10]) else { return nil }
        let deadline = Date().addingTimeInterval(seconds)
        while let text = nextLine(seconds: max(0, deadline.timeIntervalSinceNow)) {
            if let reply = try? JSON.parse(text), reply["id"]?.intValue == id { return reply }
        }
        return nil
    }
}
