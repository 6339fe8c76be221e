@testable import Schema
import ControlProtocol
import Foundation
import Lab
import ProcessSupport
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Why the lab tests cannot run here (QEMU missing, lab not built), or nil. `.ci/run` builds the lab first.
let labUnavailable: String? = Lab.unavailable()

/// `vmscope lab run` started as a user would, in the background, on a fresh socket path.
final class RunningLab {
    let socket: String
    let process: ChildProcess
    let log: String

    init(_ extra: [String] = [], socket path: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let base = NSTemporaryDirectory() + "vmscope-lab-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        socket = path ?? base + ".sock"
        log = base + ".log"
        process = try ChildProcess([Binary.url.path, "lab", "run", "--socket", socket] + extra,
                                   redirects: .init(stderr: log))
        let deadline = Date().addingTimeInterval(600)
        var up = false
        while !up && Date() < deadline && process.isRunning {
            // Serving, not merely there: a dead lab's socket file stays until the next one takes it over.
            var st = stat()
            up = lstat(socket, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
                && (try? connectUnixSocket(path: socket)).map { close($0); return true } == true
            if !up { usleep(100_000) }
        }
        try #require(up, "vmscope lab run did not serve \(socket):\n\(logText)", sourceLocation: sourceLocation)
    }

    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// The QEMU processes `lab run` started (its children).
    var qemuPIDs: [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            return fields.count > 1 && Int32(fields[1]) == process.pid && stat.contains("(qemu-system-x86")
        }
    }

    /// SIGTERM, as Ctrl-C or a service manager would: the lab must stop, QEMU go and the socket be removed.
    func stop(sourceLocation: SourceLocation = #_sourceLocation) {
        let qemu = qemuPIDs
        let status = process.terminate(grace: 30)
        #expect(status == 0, "lab run exited \(status):\n\(logText)", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: socket), "the socket is left behind", sourceLocation: sourceLocation)
        for pid in qemu {
            #expect(kill(pid, 0) != 0, "QEMU \(pid) is still there", sourceLocation: sourceLocation)
        }
        unlink(log)
    }
}

/// A client of the lab's socket, with the helpers the tests need.
extension ControlClient {
    func faults(limit: Int = 4096) throws -> [JSON] {
        try execute("query-memory-faults", .object([("limit", .i(limit))]))["records"]?.arrayValue ?? []
    }
}

/// One page a bool per RAM page from a `query-memory-attributes` reply.
func attributePages(_ reply: JSON, pages: Int) -> [Bool] {
    var out = [Bool](repeating: true, count: pages)
    for run in reply["runs"]?.arrayValue ?? [] {
        guard let gpa = run["gpa"]?.uint64Value, let size = run["size"]?.uint64Value, let p = run["private"]?.boolValue else { continue }
        for g in Int(gpa / 4096)..<min(pages, Int((gpa + size) / 4096)) { out[g] = p }
    }
    return out
}

@Suite(.serialized, .enabled(if: labUnavailable == nil, Comment(rawValue: labUnavailable ?? "")))
struct LabTests {
    @Test func capsInsideTheLabOfferPrivateMemory() throws {
        let r = try runProcess(Binary.url.path, ["lab", "exec", "--", Binary.url.path, "caps", "--json"])
        #expect(r.status == 0, "lab exec: \(r.stderr)")
        let caps = try #require(try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
                                "lab exec's output is not caps' JSON:\n\(r.stdout)\n\(r.stderr)")
        #expect(caps["memory_attributes"] as? Bool == true, "\(r.stdout)")
        #expect(caps["attribute_engine"] as? String == "kernel")
        let types = caps["vm_types"] as? [[String: Any]] ?? []
        let sw = types.first { $0["type"] as? Int == 1 }
        #expect(sw?["name"] as? String == "KVM_X86_SW_PROTECTED_VM")
        #expect(sw?["private_attribute"] as? Bool == true)
        // And the command's exit status comes back.
        let failing = try runProcess(Binary.url.path, ["lab", "exec", "--", "/bin/sh", "-c", "exit 7"])
        #expect(failing.status == 7)
    }

    /// The lab's console carries `lab exec`'s output: a kernel message printed while the command runs (under CI's
    /// load, a stall warning) landed in the middle of a line, and `caps --json` failed to parse once. The kernel's
    /// messages are held back from the console while the command runs.
    @Test func aKernelMessageDuringTheCommandStaysOutOfItsOutput() throws {
        let script = #"printf '{"a": '; echo '<3>vmscope: a kernel error in the middle' > /dev/kmsg; sleep 1; echo '1}'"#
        let r = try runProcess(Binary.url.path, ["lab", "exec", "--", "/bin/sh", "-c", script])
        #expect(r.status == 0, "lab exec: \(r.stderr)")
        #expect(r.stdout == "{\"a\": 1}\n", "\(r.stdout)")
    }

    /// Runs this package's test suite `suite` (and `others`) inside the lab (the same bundle, through 9p); expects
    /// each to pass, `tests` tests in all, and returns the output, escape sequences opened.
    func runSuiteInsideTheLab(_ suite: String, and others: [String] = [], tests: String, kernel: Lab.Kernel = .preferred,
                              sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let bundle = Binary.url.deletingLastPathComponent().appendingPathComponent("vmscopePackageTests.xctest").path
        let filters = ([suite] + others).flatMap { ["--filter", $0] }
        let r = try runProcess(Binary.url.path, ["lab", "exec", "--kernel", kernel.rawValue, "--timeout", "900", "--", bundle,
                                                 "--testing-library", "swift-testing"] + filters)
        let plain = (r.stdout + r.stderr).replacingOccurrences(of: "\u{1B}[", with: "[")
        #expect(r.status == 0, "\(plain.suffix(4000))", sourceLocation: sourceLocation)
        for s in [suite] + others {
            #expect(plain.contains("Suite \(s) passed"), "\(plain.suffix(4000))", sourceLocation: sourceLocation)
        }
        #expect(plain.contains("with \(tests)"), "\(plain.suffix(4000))", sourceLocation: sourceLocation)
        // CI's log says what ran in the lab, and under which capability set (HostKVM's line, printed in there).
        let caps = plain.split(separator: "\n").first { $0.contains("host KVM for the tests:") }.map { " under " + $0.replacingOccurrences(of: "host KVM for the tests: ", with: "") } ?? ""
        print("lab-suite: \(suite) passed in the lab (\(kernel)) with \(tests)\(caps)")
        return plain
    }

    /// The guest_memfd paths of the KVM tests (issue 26): where this host's KVM has no guest_memfd they skip here,
    /// naming the capability, and run inside the lab, where a VM type offers it (6.12: KVM_X86_SW_PROTECTED_VM).
    @Test func guestMemfdKVMTestsRunInsideTheLab() throws {
        let plain = try runSuiteInsideTheLab("RealVMTests", and: ["AssemblerTests", "BadInputTests"], tests: "13 tests in 3 suites")
        #expect(plain.contains("RealVMTests: second memslot: guest_memfd"), "\(plain.suffix(4000))")
        #expect(plain.contains("Suite BadInputTests passed"), "\(plain.suffix(4000))")
        // The guest_memfd tests ran there (they are not among the skipped).
        for test in ["guestWritesBothMemslotsThenExitsIOAndHLT", "closedGuestMemfdIsRefused", "guestMemfdWithUnknownFlagIsRefused"] {
            #expect(plain.contains("Test \(test)() passed"), "\(test) in the lab: \(plain.suffix(4000))")
        }
    }

    /// The kernel-level facts the kernel engine's layout rests on, checked where they hold: this package's
    /// `SWProtectedVMTests` run inside the lab (they skip on this host, which has no KVM_X86_SW_PROTECTED_VM).
    @Test func kernelFactsHoldInsideTheLab() throws {
        let plain = try runSuiteInsideTheLab("SWProtectedVMTests", tests: "5 tests")
        #expect(plain.contains("shared access without shared backing: KVM_RUN"), "\(plain.suffix(4000))")
    }

    /// Host tracing where KVM is kvm_amd with nested paging (issue 17): `InLabTests` run inside the lab, where a
    /// stock QEMU's exits traced through kvm_exit must equal the change in QEMU's own query-stats `exits`.
    @Test func hostTracingInsideTheLab() throws {
        let plain = try runSuiteInsideTheLab("InLabTests", tests: "2 tests")
        let line = plain.split(separator: "\n").first { $0.contains("InLabTests: QEMU's exits statistic rose by") }
        #expect(line != nil, "\(plain.suffix(4000))")
        if let line { print(line) }
        for line in plain.split(separator: "\n") where line.contains("InLabTests: stock QEMU") { print(line) }
    }

    /// The lab's other kernel (6.12, Debian stable's, beside the default 7.3): the kernel-level suites and the traced
    /// map's account of itself run there too, so what differs between the two kernels is seen, not assumed.
    @Test(.enabled(if: Lab.unavailable(.v6_12) == nil, Comment(rawValue: Lab.unavailable(.v6_12) ?? "")))
    func theOtherKernelRunsTheKernelLevelSuites() throws {
        let other: Lab.Kernel = Lab.Kernel.preferred == .v6_12 ? .v7_3 : .v6_12
        try #require(Lab.unavailable(other) == nil, "\(Lab.unavailable(other) ?? "")")
        _ = try runSuiteInsideTheLab("RealVMTests", and: ["AssemblerTests", "BadInputTests"], tests: "13 tests in 3 suites", kernel: other)
        _ = try runSuiteInsideTheLab("SWProtectedVMTests", tests: "5 tests", kernel: other)
        let inLab = try runSuiteInsideTheLab("InLabTests", tests: "2 tests", kernel: other)
        for line in inLab.split(separator: "\n") where line.contains("InLabTests: ") { print("\(other): \(line)") }
        let traced = try runSuiteInsideTheLab("TracedMapChecks", tests: "1 test", kernel: other)
        for line in traced.split(separator: "\n") where line.contains("TracedMapChecks: ") { print("\(other): \(line)") }
    }

    /// Issue 29: the traced private/shared map against the VMM's, and the traced memory faults against its kernel
    /// records (`TracedMapChecks`, run inside the lab on its default kernel).
    @Test func tracedMapInsideTheLab() throws {
        let plain = try runSuiteInsideTheLab("TracedMapChecks", tests: "1 test")
        for line in plain.split(separator: "\n") where line.contains("TracedMapChecks: ") { print(line) }
        // The inspector beside vmscope's VMM: its map and the traced one agree, no alarm (`MapAlarmChecks`).
        let alarm = try runSuiteInsideTheLab("MapAlarmChecks", tests: "3 tests")
        for line in alarm.split(separator: "\n") where line.contains("MapAlarmChecks: ") { print(line) }
    }

    /// The acceptance run: a host conversion of part of the guest's working set makes the guest's next accesses
    /// real KVM_EXIT_MEMORY_FAULTs, converted back under `convert`; the map replayed from the events equals the
    /// VMM's map; the guest's integrity errors lie only where the conversion discarded its data.
    @Test func hostConversionMakesKernelMemoryFaults() throws {
        let lab = try RunningLab(["--allow-mutations", "--ram", "64M"])
        defer { lab.stop() }
        let c = try ControlClient(path: lab.socket, timeoutMs: 30_000)
        defer { c.close() }
        let vm = try c.execute("query-vm")
        #expect(vm["attribute-engine"]?.stringValue == "kernel")
        #expect(vm["vm-type"]?.intValue == 1)
        let pages = Int((vm["ram-size"]?.uint64Value ?? 0) / 4096)
        let initial = attributePages(try c.execute("query-memory-attributes"), pages: pages)
        // The guest runs (its heartbeat moves) before anything is converted.
        let beating = eventuallyTrue(120) { (try? c.execute("query-vcpus"))?.arrayValue?.first?["guest"]?["heartbeat"]?.uint64Value ?? 0 > 2 }
        try #require(beating, "the guest in the lab does not beat: \((try? c.execute("query-vcpus"))?.serialized.prefix(2000) ?? "")\n\(lab.logText.suffix(3000))")
        let before = try c.faults().last?["seq"]?.uint64Value ?? 0

        // 64 pages of vCPU 0's working set (0x100000 on) to shared.
        let range: Range<UInt64> = 0x100000..<0x140000
        _ = try c.execute("set-memory-attributes", .object([("gpa", .u(range.lowerBound)),
                                                           ("size", .u(UInt64(range.count))), ("private", .bool(false))]))
        var inRange: [JSON] = []
        let alias: UInt64 = 1 << UInt64(vm["shared-alias"]?.intValue ?? 31)
        #expect(eventuallyTrue(120) {
            let new = ((try? c.faults()) ?? []).filter { ($0["seq"]?.uint64Value ?? 0) > before }
            inRange = new.filter { range.contains(($0["gpa"]?.uint64Value ?? 0) & ~alias) && $0["private"]?.boolValue == true }
            return inRange.count >= 32
        }, "kernel faults in the converted range: \(inRange.count)")
        for r in inRange {
            #expect(r["source"]?.stringValue == "kernel")
            #expect(r["exit"]?.stringValue == "MEMORY_FAULT")
            #expect(r["errno"]?.stringValue == "EFAULT")
            #expect(r["flags"]?.uint64Value == 8)
            #expect(r["action"]?.stringValue == "converted")
            #expect(r["size"]?.uint64Value == 4096)
        }
        // Under `convert` the guest takes every page back as its next pass touches it.
        let rangeArgs = JSON.object([("gpa", .u(range.lowerBound)), ("size", .u(UInt64(range.count)))])
        #expect(eventuallyTrue(120) {
            (try? c.execute("query-memory-attributes", rangeArgs))?["shared-bytes"]?.uint64Value == 0
        }, "the converted range did not come back private")
        // Stop the guest, then replay every MEMORY_ATTRIBUTES_CHANGED onto the map as it was.
        _ = try c.execute("vcpu-control", .object([("action", .string("pause"))]))
        Thread.sleep(forTimeInterval: 1)
        let final = attributePages(try c.execute("query-memory-attributes"), pages: pages)
        var replayed = initial
        var integrity: [UInt64] = []
        var bounceErrors = 0
        /// Pages the guest itself last made shared (its wrong-view reads and requests go on until the pause).
        var sharedByGuest = Set<Int>()
        for e in c.drainEvents() {
            let data = e["data"]
            switch e["event"]?.stringValue {
            case "MEMORY_ATTRIBUTES_CHANGED":
                guard let gpa = data?["gpa"]?.uint64Value, let size = data?["size"]?.uint64Value,
                      let p = data?["private"]?.boolValue else { continue }
                let byGuest = data?["cause"]?.stringValue != "command"
                for g in Int(gpa / 4096)..<min(pages, Int((gpa + size) / 4096)) {
                    replayed[g] = p
                    if !p && byGuest { sharedByGuest.insert(g) } else { sharedByGuest.remove(g) }
                }
            case "GUEST_REPORT":
                if data?["kind"]?.stringValue == "integrity-error", let v = data?["value"]?.uint64Value { integrity.append(v) }
                if data?["kind"]?.stringValue == "bounce-error" { bounceErrors += 1 }
            default: break
            }
        }
        #expect(c.eventsDropped == 0)
        #expect(replayed == final, "replayed map differs at \(zip(replayed, final).enumerated().filter { $0.element.0 != $0.element.1 }.prefix(5).map(\.offset))")
        // Every page the command made shared came back; one the guest's own activity made shared again before the
        // pause is the guest's, not the command's.
        let stillShared = (Int(range.lowerBound / 4096)..<Int(range.upperBound / 4096)).filter { !final[$0] }
        #expect(stillShared.allSatisfy { sharedByGuest.contains($0) }, "pages left shared by the command: \(stillShared.filter { !sharedByGuest.contains($0) })")
        // What the conversion discarded is what the guest finds wrong, and nothing else.
        let outside = integrity.filter { !range.contains($0 & ~0xFFF) }
        #expect(outside.isEmpty, "integrity errors outside the converted range: \(outside.map { String($0, radix: 16) })")
        #expect(bounceErrors == 0)
    }

    /// Python's qemu.qmp and four clients at once, through the lab's relay.
    @Test func thirdPartyClientsAtOnce() throws {
        let python = try ThirdPartyQMPClientTests.python()
        let lab = try RunningLab()
        defer { lab.stop() }
        let script = """
            import asyncio, json, sys
            from qemu.qmp import QMPClient
            async def one(i):
                q = QMPClient('lab-%d' % i)
                await q.connect(sys.argv[1])
                vm = await q.execute('query-vm')
                vcpus = await q.execute('query-vcpus')
                slots = await q.execute('query-memslots')
                await q.disconnect()
                return [vm['attribute-engine'], vm['vm-type'], len(vcpus), len(slots)]
            async def main():
                print(json.dumps(await asyncio.gather(*[one(i) for i in range(5)])))
            asyncio.run(asyncio.wait_for(main(), 120))
            """
        let r = try runProcess(python, ["-c", script, lab.socket])
        #expect(r.status == 0, "\(r.stderr)")
        let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[Any]] ?? []
        #expect(out.count == 5)
        for row in out {
            #expect(row.first as? String == "kernel")
            #expect(row.dropFirst().first as? Int == 1)
        }
        // vmscope's own tools unchanged: ctl and snapshot.
        let snap = try runProcess(Binary.url.path, ["snapshot", lab.socket])
        #expect(snap.status == 0, "\(snap.stderr)")
        #expect(snap.stdout.contains("\"attribute-engine\":\"kernel\"") || snap.stdout.contains("\"attribute-engine\": \"kernel\""))
    }

    /// The demo on the kernel engine, driven as a person would in tmux: kernel rows after s/y on a selection of
    /// the working set; q leaves no QEMU and no socket.
    @Test func demoOnTheLabShowsKernelFaults() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo --lab; echo VMSCOPE-EXIT=$?; sleep 60")
        var screen = t.waitFor(300) { $0.contains("engine kernel") && $0.contains("rip 0x") && $0.contains("heartbeat") }
        #expect(screen.contains("engine kernel"), "\(screen)")
        let socket = try #require(screen.range(of: "demo VM socket: ").map { r in
            String(screen[r.upperBound...].prefix { $0 != " " && $0 != "\n" })
        }, "no socket path in:\n\(screen)")
        let pane = try #require(t.pid)
        let qemu = descendants(of: pane).filter { $0.command.hasPrefix("qemu-system") }
        #expect(qemu.count == 1, "QEMU processes under the demo: \(qemu)")

        // Select the start of vCPU 0's working set, convert it to shared, confirm.
        screen = t.askToConvertFourCellsAtTheWorkingSet(wait: 5)
        #expect(screen.contains("at 0x100000 to shared? y/N"), "\(screen)")
        t.keys("y")
        // Rows of the faults pane: kernel records for pages of the converted range, converted back.
        func kernelRows(_ s: String) -> [String] {
            s.split(separator: "\n").map(String.init).filter { $0.contains(" kernel converted") }
        }
        screen = t.waitFor(120) { s in
            s.contains("to shared: done") && kernelRows(s).contains { row in
                guard let r = row.range(of: " gfn ") else { return false }
                let gfn = Int(row[r.upperBound...].prefix { $0.isNumber }) ?? -1
                return (256..<512).contains(gfn) && row.contains(" priv ")
            }
        }
        #expect(screen.contains("to shared: done"), "\(screen)")
        #expect(!kernelRows(screen).isEmpty, "no kernel rows:\n\(screen)")
        #expect(!screen.contains("vmm/MMIO"), "a vmm-engine record in the kernel demo:\n\(screen)")

        t.keys("q")
        screen = t.waitFor(30) { $0.contains("VMSCOPE-EXIT=") }
        #expect(screen.contains("VMSCOPE-EXIT=0"), "\(screen)")
        #expect(!FileManager.default.fileExists(atPath: socket), "\(socket) is left behind")
        for q in qemu { #expect(kill(q.pid, 0) != 0, "QEMU \(q.pid) is still running") }
    }

    /// Issue 28, class 6, through a real lab (virtio-serial under TCG, 250–600 KB/s measured): a client's
    /// `query-version` beside 16 clients that never read and 16 that read everything is answered within 500 ms
    /// (median 0.1 s, max 0.4 s here; it took 2–66 s while the VMM encoded each event once per client, which cost
    /// the lab's slow guest most of the server's time, and while a reply queued behind its own events on the link);
    /// a half-closing client gets every reply (it got none), and 64 clients at once are all answered (alone in
    /// 1–6 s, 16 s under the full test run's load, so that time is not bounded here). The relay's own fairness is
    /// also bounded in `LabRelayTests`, on a paced link before a native VMM.
    @Test func theRelayIsFairToEveryClient() throws {
        let lab = try RunningLab()
        defer { lab.stop() }
        let l = try RelayPatterns.crowdLatencies(lab.socket)
        let median = l.sorted()[l.count / 2]
        print("lab relay, query-version beside 16 never-reading and 16 reading clients: max \(Int(l.max()!)) ms, median \(Int(median)) ms")
        #expect(median < 500, "\(l.map { Int($0) })")
        let (ids, ended) = try RelayPatterns.halfClose(lab.socket)
        #expect(ids == Array(0..<200), "\(ids.count) replies")
        #expect(ended)
        let many = RelayPatterns.manyAtOnce(lab.socket, 64)
        let answered = many.compactMap { try? $0.get() }
        print("lab relay, 64 clients at once: \(answered.count) answered, the last after \(String(format: "%.2f", answered.max() ?? -1)) s")
        #expect(answered.count == 64, "\(many.filter { (try? $0.get()) == nil })")
    }

    /// A SIGKILLed `lab run` cannot remove its socket; its QEMU goes with it, and the next `lab run` on the same
    /// path takes the dead socket over (as the VMM does) instead of refusing it as in use.
    @Test func aSIGKILLedLabsSocketIsTakenOverByTheNext() throws {
        let path = NSTemporaryDirectory() + "vmscope-lab-kill-\(getpid()).sock"
        let first = try RunningLab(socket: path)
        let qemu = first.qemuPIDs
        kill(first.process.pid, SIGKILL)
        _ = first.process.wait(seconds: 10)
        #expect(eventuallyTrue(10) { qemu.allSatisfy { kill($0, 0) != 0 } }, "QEMU outlived a SIGKILLed lab run")
        var st = stat()
        #expect(lstat(path, &st) == 0, "the dead lab's socket is there, as SIGKILL leaves it")
        let second = try RunningLab(socket: path)
        defer { second.stop() }
        let c = try ControlClient(path: path, timeoutMs: 30_000)
        defer { c.close() }
        #expect(try c.execute("query-vm")["attribute-engine"]?.stringValue == "kernel")
        unlink(first.log)
    }

    /// The lab's socket answers as the VMM's own: another uid is refused with one line.
    @Test func otherUsersAreRefused() throws {
        try #require(getuid() == 0, "needs root to act as another uid")
        let lab = try RunningLab()
        defer { lab.stop() }
        let r = try runProcess("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                    Binary.url.path, "ctl", lab.socket, "query-vm"])
        #expect(r.status != 0)
        #expect((r.stdout + r.stderr).contains("PermissionDenied") || (r.stdout + r.stderr).contains("Permission denied"),
                "\(r.stdout)\(r.stderr)")
    }
}

/// Every process below `root` (children, their children, ...), from /proc.
func descendants(of root: Int32) -> [(pid: Int32, command: String)] {
    var parent: [Int32: Int32] = [:], command: [Int32: String] = [:]
    for e in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let pid = Int32(e), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
        guard fields.count > 1, let ppid = Int32(fields[1]) else { continue }
        parent[pid] = ppid
        command[pid] = String(stat[stat.index(after: open)..<close])
    }
    return parent.keys.filter { pid in
        var p = parent[pid]
        while let q = p, q > 1 { if q == root { return true }; p = parent[q] }
        return false
    }.map { ($0, command[$0] ?? "?") }
}

/// Polls `condition` until it holds or `seconds` pass.
func eventuallyTrue(_ seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(200_000)
    }
    return condition()
}

