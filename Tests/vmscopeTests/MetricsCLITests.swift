@testable import Schema
import ControlProtocol
import Foundation
import ProcessSupport
import Testing
import TestSupport

let prometheusBinary = ["/usr/bin/prometheus"].first { FileManager.default.isExecutableFile(atPath: $0) }
let promtoolBinary = ["/usr/bin/promtool"].first { FileManager.default.isExecutableFile(atPath: $0) }

/// A TCP port nobody listens on now (the kernel's pick for port 0; the tiny race with another binder is accepted).
func freeTCPPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: a.sin_port))
}

/// `vmscope top --metrics` and `vmscope vmm --metrics`, scraped the way people do: by a real Prometheus (Debian's
/// package), checked by `promtool`, and poked with the bad requests a port on a host gets.
@Suite(.serialized, .enabled(if: kvmPresent && getuid() == 0, "needs /dev/kvm and root (KVM's debugfs, tracefs)"))
struct MetricsCLITests {
    /// `top --metrics` on a free port; the child and its port.
    static func startTop(interval: String = "1") throws -> (ChildProcess, Int, String) {
        let port = freeTCPPort()
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-top-metrics-\(getpid())-\(port).log").path
        let top = try ChildProcess([Binary.url.path, "top", "--metrics", "127.0.0.1:\(port)", "--interval", interval],
                                   redirects: .init(stdin: "/dev/null", stdout: log, stderr: log))
        let up = eventuallyTrue(20) { httpGet(port: port, "/metrics").status == 200 }
        try #require(up, "top --metrics did not serve: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        return (top, port, log)
    }

    /// A real Prometheus scraping `top --metrics` every second while vmscope's VMM and a stock QEMU run: both VMs'
    /// exit counters rise; after a conversion burst on the VMM, `increase(vmscope_memory_fault_exits_total[1m])` is
    /// above 0 for that VM and for no other.
    /// (QEMU's exits are counted from tracepoints: without libtracefs there is nothing to see of it.)
    @Test(.enabled(if: prometheusBinary != nil, "Debian's prometheus package is not installed"),
          .enabled(if: tracingLibrariesMissing == nil, Comment(rawValue: tracingLibrariesMissing ?? "")))
    func prometheusSeesBothVMsAndTheBurstOnOneOnly() throws {
        let vmm = try RunningVMM(["--allow-mutations", "--vcpus", "2"])
        defer { vmm.stop() }
        // QEMU on a firmware that exits to it (port 0x80) every few tens of ms for ever. SeaBIOS without a boot device
        // goes quiet once its POST is done, and under PVM, which emulates each of its instructions, resets every
        // 300 ms did not keep QEMU exiting on a busy host (a full run saw its count stay at 34 for 30 s).
        let qemu: QEMUInstance? = qemuAvailable ? try APICPollingFirmware.startQEMU(qemuConfigurations[0].arguments, monitors: 1) : nil
        defer { qemu?.stop() }
        if qemu == nil { print("prometheusSeesBothVMsAndTheBurstOnOneOnly: no QEMU installed; vmscope's VMM only") }
        let (top, port, log) = try Self.startTop()
        defer { _ = top.terminate(); unlink(log) }

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-prom-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = """
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: vmscope
                static_configs:
                  - targets: ['127.0.0.1:\(port)']
            """
        try config.write(to: dir.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
        let promPort = freeTCPPort()
        let prom = try ChildProcess([prometheusBinary!, "--config.file=\(dir.path)/prometheus.yml", "--storage.tsdb.path=\(dir.path)/data",
                                     "--web.listen-address=127.0.0.1:\(promPort)"],
                                    redirects: .init(stdin: "/dev/null", stdout: dir.path + "/prom.log", stderr: dir.path + "/prom.log"))
        defer { _ = prom.terminate() }

        /// An instant query through Prometheus's HTTP API: value per `pid` label.
        func query(_ q: String) -> [String: Double] {
            let encoded = q.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? q
            let r = httpGet(port: promPort, "/api/v1/query?query=\(encoded)")
            guard r.status == 200, let j = try? JSON.parse(r.body) else { return [:] }
            var out: [String: Double] = [:]
            for s in j["data"]?["result"]?.arrayValue ?? [] {
                guard let pid = s["metric"]?["pid"]?.stringValue, let v = s["value"]?.arrayValue?.last?.stringValue,
                      let d = Double(v) else { continue }
                out[pid] = d
            }
            return out
        }
        let vmmPid = String(vmm.process.processIdentifier), qemuPid = qemu.map { String($0.process.pid) }
        // Exits: KVM's statistic where the VMM holds its vCPUs' statistics files; exits to userspace (the VMM's own
        // counts, or tracepoints) otherwise. Both must rise between two queries.
        let exits = "sum by (pid) (vmscope_kvm_exits_total) or sum by (pid) (vmscope_userspace_exits_total)"
        let up = eventuallyTrue(60) {
            let v = query(exits)
            return v[vmmPid] != nil && (qemuPid == nil || v[qemuPid!] != nil)
        }
        let first = query(exits)
        #expect(up, "Prometheus has both VMs' exit counters: \(first); prometheus log: \((try? String(contentsOfFile: dir.path + "/prom.log", encoding: .utf8))?.suffix(2000) ?? "")")
        var second: [String: Double] = [:]
        let rose = eventuallyTrue(30) {
            second = query(exits)
            return (second[vmmPid] ?? 0) > (first[vmmPid] ?? .infinity)
                && (qemuPid == nil || (second[qemuPid!] ?? 0) > (first[qemuPid!] ?? .infinity))
        }
        #expect(rose, "exit counters rise: \(first) → \(second)")

        // The burst: the guest's working set (256 pages) converted shared under it; the guest faults each page back.
        // Its own background conversions fault a few times a second, so the burst must add far more than that.
        let faults = "sum by (pid) (vmscope_memory_fault_exits_total)"
        let before = query(faults)
        let c = try ControlClient(path: vmm.socket)
        defer { c.close() }
        _ = try c.execute("set-memory-attributes", .object([("gpa", .u(0x10_0000)), ("size", .u(256 * 4096)), ("private", .bool(false))]))
        var after: [String: Double] = [:]
        let burst = eventuallyTrue(20) {
            after = query(faults)
            return (after[vmmPid] ?? 0) - (before[vmmPid] ?? 0) >= 200
        }
        #expect(burst, "the burst's faults reach Prometheus: \(before[vmmPid] ?? -1) → \(after[vmmPid] ?? -1)")
        var increase: [String: Double] = [:]
        let seen = eventuallyTrue(30) {
            increase = query("sum by (pid) (increase(vmscope_memory_fault_exits_total[1m]))")
            return (increase[vmmPid] ?? 0) >= 200
        }
        #expect(seen, "increase(vmscope_memory_fault_exits_total[1m]) for the VMM: \(increase)")
        // "That VM only" among the two this test runs (other suites' VMMs, running in parallel, fault on their own).
        if let qemuPid {
            #expect((increase[qemuPid] ?? 0) == 0, "QEMU has no memory-fault exits: \(increase)")
            #expect(query("sum by (pid) (vmscope_vcpus)")[qemuPid] == Double(qemuConfigurations[0].vcpus), "QEMU's vCPUs in Prometheus")
        }
    }

    /// promtool accepts the endpoint's output (names, types, help, histogram), for `top` and for one VMM.
    @Test(.enabled(if: promtoolBinary != nil, "Debian's prometheus package (promtool) is not installed"))
    func promtoolAcceptsTheExposition() throws {
        let port = freeTCPPort()
        let vmm = try RunningVMM(["--allow-mutations", "--metrics", "127.0.0.1:\(port)"])
        defer { vmm.stop() }
        _ = eventuallyTrue(20) { httpGet(port: port, "/metrics").body.contains("vmscope_conversion_duration_seconds_count") }
        let (top, topPort, log) = try Self.startTop()
        defer { _ = top.terminate(); unlink(log) }
        _ = eventuallyTrue(10) { httpGet(port: topPort, "/metrics").body.contains("pid=\"\(vmm.process.processIdentifier)\"") }
        for (what, p) in [("vmm --metrics", port), ("top --metrics", topPort)] {
            let r = httpGet(port: p, "/metrics")
            #expect(r.status == 200, "\(what): \(r.status)")
            #expect(r.body.contains("vmscope_memory_fault_exits_total") || r.body.contains("vmscope_kvm_exits_total"), "\(what): \(r.body.prefix(500))")
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-exposition-\(getpid()).txt").path
            try r.body.write(toFile: file, atomically: true, encoding: .utf8)
            defer { unlink(file) }
            let check = try runProcess("/bin/sh", ["-c", "\(promtoolBinary!) check metrics < \(file)"])
            #expect(check.status == 0, "\(what): promtool check metrics: \(check.stdout)\(check.stderr)")
            #expect(check.stdout.isEmpty && check.stderr.isEmpty, "\(what): promtool has remarks: \(check.stdout)\(check.stderr)")
        }
        // The VMM alone: its series carry its pid, and only its.
        let body = httpGet(port: port, "/metrics").body
        let pids = Set(body.split(separator: "\n").compactMap { line -> Substring? in
            guard !line.hasPrefix("#"), let r = line.range(of: "pid=\"") else { return nil }
            return line[r.upperBound...].prefix { $0 != "\"" }
        })
        #expect(pids == [Substring(String(vmm.process.processIdentifier))], "\(pids)")
    }

    /// Unknown paths, other methods, huge headers, a slowloris and 60 idle connections: each gets the HTTP answer people
    /// expect (or the connection closed), and scrapes beside them keep answering within 50 ms.
    @Test func badRequestsGetHTTPAnswersAndNeverStallScrapes() throws {
        let vmm = try RunningVMM([])
        defer { vmm.stop() }
        let (top, port, log) = try Self.startTop()
        defer { _ = top.terminate(); unlink(log) }

        #expect(httpGet(port: port, "/nope").status == 404)
        #expect(httpGet(port: port, "/").status == 200)
        let post = httpExchange(port: port, Array("POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n".utf8)).response
        #expect(post.hasPrefix("HTTP/1.1 405") || post.hasPrefix("HTTP/1.0 405"), "\(post.prefix(200))")
        // OPTIONS and TRACE too, as the README promises (they got 404), and HEAD gives GET's length (it gave 0).
        for method in ["OPTIONS", "TRACE"] {
            let r = httpExchange(port: port, Array("\(method) /metrics HTTP/1.0\r\n\r\n".utf8)).response
            #expect(r.hasPrefix("HTTP/1.1 405") || r.hasPrefix("HTTP/1.0 405"), "\(method): \(r.prefix(200))")
        }
        let head = httpExchange(port: port, Array("HEAD /metrics HTTP/1.0\r\n\r\n".utf8)).response.lowercased()
        let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }.flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) }
        #expect((length ?? 0) > 100, "HEAD's Content-Length: \(head.prefix(300))")
        let huge = httpExchange(port: port, Array("GET /metrics HTTP/1.0\r\nX-Big: \(String(repeating: "a", count: 1 << 20))\r\n\r\n".utf8))
        #expect(huge.response.isEmpty || huge.response.hasPrefix("HTTP/1.1 4") || huge.response.hasPrefix("HTTP/1.0 4"),
                "a 1 MiB header is refused: \(huge.response.prefix(200))")
        #expect(!huge.response.contains("vmscope_"), "no metrics for a 1 MiB header")
        #expect(httpGet(port: port, "/metrics").status == 200, "still serving after the huge header")

        // 60 idle connections and a slowloris sending its request a byte every 100 ms, while scrapes go on.
        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<60 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET); a.sin_port = UInt16(port).bigEndian; a.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            idle.append(fd)
        }
        let slow = Thread {
            let req = Array("GET /metrics HTTP/1.0\r\nHost: x\r\nX-Slow: \(String(repeating: "s", count: 30))\r\n\r\n".utf8)
            _ = httpExchange(port: port, req, pieces: req.count, pause: 0.1, timeout: 20)
        }
        slow.start()
        // Scrapes within 50 ms while all that is open (the 64-connection limit leaves room for 2 at a time).
        for _ in 0..<3 { close(idle.removeLast()) }
        var worst = 0.0
        for _ in 0..<20 {
            let r = httpGet(port: port, "/metrics")
            #expect(r.status == 200)
            worst = max(worst, r.seconds)
            usleep(100_000)
        }
        print("scrape beside 57 idle connections and a slowloris: worst \(Int(worst * 1000)) ms")
        // The ≤ 50 ms figure is measured in the release benchmark (docs/benchmarks.md); here, under the test run's load,
        // "never stalls" means far below the 10 s a stalled connection would wait.
        #expect(worst < 2, "a scrape took \(worst) s")
    }

    /// SIGTERM and SIGINT end `top --metrics` with status 0 and nothing said at error level: cancelling the HTTP
    /// server's task made Hummingbird log "error ... Waiting on child channel: CancellationError()" on every exit.
    @Test(arguments: [SIGTERM, SIGINT])
    func aSignalEndsItQuietly(signal: Int32) throws {
        let (top, port, log) = try Self.startTop()
        defer { unlink(log) }
        #expect(httpGet(port: port, "/metrics").status == 200)
        top.signal(signal)
        let status = top.wait(seconds: 20)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(status == 0, "\(text)")
        #expect(!text.contains(" error ") && !text.contains("CancellationError"), "\(text)")
    }

    /// Issue 28, class 9: an HTTP/1.0 request without keep-alive (curl -0, simple probes) has its connection closed
    /// once answered, as does HTTP/1.1 with `Connection: Close`; it was held open until the 10 s idle timeout, a slot
    /// of the endpoint's 64 each. A keep-alive HTTP/1.0 client keeps its connection for a second request.
    @Test func http10WithoutKeepAliveIsClosedOnceAnswered() throws {
        let vmm = try RunningVMM([])
        defer { vmm.stop() }
        let (top, port, log) = try Self.startTop()
        defer { _ = top.terminate(); unlink(log) }
        for request in ["GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n", "HEAD /metrics HTTP/1.0\r\n\r\n",
                        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"] {
            let r = httpExchange(port: port, Array(request.utf8), timeout: 8, untilClosed: true)
            #expect(r.response.hasPrefix("HTTP/1.1 200"), "\(request.prefix(30)): \(r.response.prefix(200))")
            #expect(r.seconds < 2, "\(request.prefix(30)) was closed after \(r.seconds) s")
        }
        // Keep-alive asked for: both answers on one connection.
        let twice = "GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        let r = httpExchange(port: port, Array((twice + twice).utf8), timeout: 3, untilClosed: true)
        #expect(r.response.components(separatedBy: "HTTP/1.1 200").count == 3, "\(r.response.prefix(300))")
    }

    /// Issue 28, class 4: another user (nobody) holding 200 connections and reopening those the exporter closes, and
    /// eight clients pipelining requests they never read: scrapes beside them are answered within 2 s under the test
    /// run's load (a few ms alone; they took 9 s and more, or none was answered), the
    /// other user holds at most its share (8), and the exporter's memory does not grow with the unread answers.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"),
                   "needs setpriv and python3 to act as another user"))
    func anotherUsersConnectionsAndUnreadPipelinesStarveNoScrape() throws {
        let vmm = try RunningVMM([])
        defer { vmm.stop() }
        let (top, port, log) = try Self.startTop()
        defer { _ = top.terminate(); unlink(log) }
        let holder = """
            import socket, sys, time
            port = int(sys.argv[1]); held = []; opened = 0; end = time.time() + 20
            while time.time() < end:
                alive = []
                for s in held:
                    try:
                        if s.recv(1, socket.MSG_DONTWAIT) == b"": s.close(); continue
                    except BlockingIOError: pass
                    except OSError: s.close(); continue
                    alive.append(s)
                held = alive
                while len(held) < 200:
                    s = socket.socket(); s.settimeout(0.2)
                    try: s.connect(("127.0.0.1", port)); held.append(s); opened += 1
                    except OSError: s.close(); break
                time.sleep(0.05)
            print("opened", opened, "held", len(held))
            """
        let holderLog = log + ".holder"
        let nobody = try ChildProcess(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", holder, String(port)],
                                      redirects: .init(stdout: holderLog, stderr: holderLog))
        defer { _ = nobody.terminate(); unlink(holderLog) }
        // Eight clients pipelining 20,000 requests each, never reading an answer.
        let rss0 = residentBytes(pid: top.pid) ?? 0
        var pipeliners: [Int32] = []
        defer { for fd in pipeliners { close(fd) } }
        let requests = Array(String(repeating: "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", count: 20_000).utf8)
        for _ in 0..<8 {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET); a.sin_port = UInt16(port).bigEndian; a.sin_addr.s_addr = inet_addr("127.0.0.1")
            _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = requests.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            pipeliners.append(fd)
        }
        Thread.sleep(forTimeInterval: 3)
        let rss3 = residentBytes(pid: top.pid) ?? 0
        var worst = 0.0
        for _ in 0..<10 {
            let r = httpGet(port: port, "/metrics", timeout: 8)
            #expect(r.status == 200, "a scrape beside another user's 200 connections: \(r.status)")
            worst = max(worst, r.seconds)
            usleep(300_000)
        }
        // What the other user holds now, by the kernel's account (for the log: connections it has just reopened and the
        // server has not yet accepted and closed count too, so this is not its share).
        let held = MetricsCLITests.establishedConnections(toPort: port, uid: 65534)
        let rssEnd = residentBytes(pid: top.pid) ?? 0
        let growth = (Double(rssEnd) - Double(rss0)) / Double(1 << 20), later = (Double(rssEnd) - Double(rss3)) / Double(1 << 20)
        print("scrapes beside another user's 200 connections and 8 unread pipelines: worst \(Int(worst * 1000)) ms; nobody holds \(held); "
              + "exporter RSS +\(String(format: "%.1f", growth)) MiB, +\(String(format: "%.1f", later)) MiB after the first 3 s")
        // A few ms alone (each of the other user's reconnections costs one sock_diag request; it was about 1 s, 2.6 s
        // under the full suite's load, while each read all of /proc/net/tcp).
        #expect(worst < 2, "a scrape took \(worst) s (it was 9 s and more before, and none answered after 20 s)")
        // Each unread connection holds its socket's fixed send buffer and the answers in flight, then is not read
        // further (it was about 4.7 MiB a connection, and every scrape waited behind the burst).
        #expect(growth < 48, "unread pipelined answers grew the exporter by \(growth) MiB")
        #expect(later < 6, "the exporter kept growing while the pipelines stayed unread: +\(later) MiB")
        let logText = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(logText.contains("refused a connection from uid 65534"), "the log says whose connections were refused: \(logText.suffix(1000))")
    }

    /// Established TCP connections owned by `uid` whose remote port is `port` (/proc/net/tcp).
    static func establishedConnections(toPort port: Int, uid: uid_t) -> Int {
        let want = String(format: ":%04X", port)
        var n = 0
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            for line in ((try? String(contentsOfFile: table, encoding: .utf8)) ?? "").split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                if f.count > 7, f[2].hasSuffix(want), f[3] == "01", uid_t(f[7]) == uid { n += 1 }
            }
        }
        return n
    }

    /// The server-side ends of connections to the Unix socket `path` (/proc/net/unix lists an accepted connection
    /// under the path its listener was bound to: the VMM binds a temporary name beside `path`, then renames it):
    /// their inodes.
    static func acceptedConnections(_ path: String) -> Set<String> {
        var out: Set<String> = []
        for line in ((try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8)) ?? "").split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            // Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
            if f.count >= 8, f[5] == "03", f[7] == path || f[7].hasPrefix(path + ".") { out.insert(String(f[6])) }
        }
        return out
    }

    /// `top --metrics` keeps one connection to a vmscope VMM, its events off, instead of connecting every pass (in
    /// the lab that was 8 % of top's CPU), and the VMM's series still come.
    @Test func oneConnectionIsKeptToEachVMM() throws {
        let a = try RunningVMM([])
        defer { a.stop() }
        let (top, port, log) = try Self.startTop(interval: "0.2")
        defer { _ = top.terminate(); unlink(log) }
        let pid = "pid=\"\(a.process.processIdentifier)\""
        #expect(eventuallyTrue(10) { httpGet(port: port, "/metrics").body.split(separator: "\n").contains { $0.contains(pid) && $0.contains("fault-ring") } },
                "the VMM's own series (query-metrics) were not exported")
        // The VMM's own count of exits to userspace (query-metrics), summed over reasons.
        func exits() -> Double {
            httpGet(port: port, "/metrics").body.split(separator: "\n")
                .filter { $0.hasPrefix("vmscope_userspace_exits_total{") && $0.contains(pid) }
                .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0, +)
        }
        let before = exits()
        // Over a dozen passes: always one connection, always the same.
        var seen: [Set<String>] = []
        for _ in 0..<8 {
            seen.append(Self.acceptedConnections(a.socket))
            Thread.sleep(forTimeInterval: 0.3)
        }
        #expect(seen.allSatisfy { $0.count == 1 } && Set(seen).count == 1, "connections to the VMM's socket at each look: \(seen)")
        // Asked afresh on the kept connection each pass.
        #expect(eventuallyTrue(5) { exits() > before }, "the VMM's exits stayed at \(before)")
    }

    /// A VM that goes away has its series removed.
    @Test func aVMThatGoesAwayLosesItsSeries() throws {
        let a = try RunningVMM([]), b = try RunningVMM([])
        defer { a.stop(); b.stop() }
        let (top, port, log) = try Self.startTop(interval: "0.5")
        defer { _ = top.terminate(); unlink(log) }
        let pa = "pid=\"\(a.process.processIdentifier)\"", pb = "pid=\"\(b.process.processIdentifier)\""
        #expect(eventuallyTrue(10) { let m = httpGet(port: port, "/metrics").body; return m.contains(pa) && m.contains(pb) })
        b.stop()
        #expect(eventuallyTrue(10) { !httpGet(port: port, "/metrics").body.contains(pb) }, "b's series are gone")
        #expect(httpGet(port: port, "/metrics").body.contains(pa), "a's series stay")
    }
}
