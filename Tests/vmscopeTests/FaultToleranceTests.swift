@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing
import TestSupport

/// `vmscope vmm` as a child process on a fresh socket path.
func startVMM(_ socket: String, _ extra: [String] = [], log: String) throws -> ChildProcess {
    let vmm = try ChildProcess([Binary.url.path, "vmm", "--socket", socket, "--ram", "64M"] + extra, redirects: .init(stderr: log))
    var up = false
    for _ in 0..<1000 where !up && vmm.isRunning {
        if let c = try? ControlClient(path: socket, timeoutMs: 200) {
            up = (try? c.execute("query-vm")) != nil
            c.close()
        }
        if !up { usleep(10_000) }
    }
    try #require(up, "the VMM did not come up: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
    return vmm
}

/// The first child of `pid` (the program a tmux pane's shell runs).
func childPid(of pid: Int32) -> Int32? {
    let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    return children.split(separator: " ").first.flatMap { Int32($0) }
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct FaultToleranceTests {
    let dir = makeTestDirectory("ft")

    @Test func aKilledInspectorCostsTheVMMNothing() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        let observer = try ControlClient(path: socket)
        defer { observer.close() }
        Thread.sleep(forTimeInterval: 0.5)
        let baseline = resources(vmm.pid)
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(socket); echo VMSCOPE-EXIT=$?; sleep 60")
        defer { t.kill() }
        _ = t.waitFor(20) { $0.contains("vmm/MMIO") && $0.contains("running") }
        let inspector = try #require(t.pid.flatMap(childPid), "no inspector process under the pane")
        #expect(resources(vmm.pid).fds == baseline.fds + 1, "the inspector's connection")
        let seqBefore = try #require(observer.execute("query-memory-faults", .object([("limit", .i(0))]))["total"]?.uint64Value)
        kill(inspector, SIGKILL)
        // A killed inspector leaves the cursor where it was: the shell's line may wrap at the pane's edge.
        func unwrapped(_ screen: String) -> String { screen.replacingOccurrences(of: "\n", with: "") }
        let screen = t.waitFor(5) { unwrapped($0).contains("VMSCOPE-EXIT=137") }
        #expect(unwrapped(screen).contains("VMSCOPE-EXIT=137"), "\(screen)")
        // The VMM serves on: the other client's stream goes on without a gap, and the dead client's fd is closed.
        // (Read until records from after the kill arrive: under the full suite's load the guest faults slowly.)
        var batches: [FaultBatch] = []
        let until = Date().addingTimeInterval(30)
        while Date() < until, (batches.last?.records.last?.seq ?? 0) <= seqBefore + 3 {
            if case .json(let j)? = observer.nextItem(timeoutMs: 100), j["event"] == .string("MEMORY_FAULT") {
                batches.append(FaultBatch(data: j["data"]))
            }
        }
        let seqs = batches.flatMap(\.records).map(\.seq)
        #expect(seqs.count > 3 && (seqs.last ?? 0) > seqBefore, "faults after the kill: \(seqs.count)")
        #expect(batches.allSatisfy { $0.dropped == 0 } && zip(seqs, seqs.dropFirst()).allSatisfy { $1 == $0 + 1 })
        let vm = try observer.execute("query-vm")
        #expect(vmm.isRunning && vm["name"] != nil)
        var after = resources(vmm.pid)
        for _ in 0..<30 where after.fds != baseline.fds { usleep(100_000); after = resources(vmm.pid) }
        #expect(after.fds == baseline.fds && after.threads == baseline.threads, "\(baseline) → \(after)")
    }

    @Test func aKilledVMMRestartedOnItsSocketIsReattachedAndTheGapIsShown() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let first = try startVMM(socket, log: dir + "/vmm1.log")
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(socket); echo VMSCOPE-EXIT=$?; sleep 60", width: 200, height: 50)
        defer { t.kill() }
        _ = t.waitFor(20) { $0.contains("vmm/MMIO") && $0.contains("running") }
        first.signal(SIGKILL)
        _ = first.wait(seconds: 5)
        var screen = t.waitFor(10) { $0.contains("disconnected — retrying") }
        #expect(screen.contains("disconnected — retrying"), "\(screen)")
        // The killed VMM left its socket behind: a new one replaces it (nobody listens), and says so.
        #expect(FileManager.default.fileExists(atPath: socket))
        Thread.sleep(forTimeInterval: 1)
        let second = try startVMM(socket, log: dir + "/vmm2.log")
        defer { _ = second.terminate() }
        #expect(((try? String(contentsOfFile: dir + "/vmm2.log", encoding: .utf8)) ?? "").contains("replaced a stale socket"))
        screen = t.waitFor(15) { $0.contains("reconnected after") }
        #expect(screen.contains("the VMM restarted (pid \(first.pid) → \(second.pid))"), "\(screen)")
        screen = t.waitFor(15) { !$0.contains("disconnected") && $0.contains("running") }
        #expect(screen.contains("connected"), "\(screen)")
        // A live VMM's socket is not taken over.
        let third = try Binary.run(["vmm", "--socket", socket, "--ram", "64M"])
        #expect(third.status != 0 && third.stderr.contains("is in use: another VMM is serving it"), "\(third.stderr)")
        #expect(second.isRunning)
        // Nor is a file that is not a socket.
        let file = dir + "/not-a-socket"
        try "x".write(toFile: file, atomically: true, encoding: .utf8)
        let fourth = try Binary.run(["vmm", "--socket", file, "--ram", "64M"])
        #expect(fourth.status != 0 && fourth.stderr.contains("is not a socket"), "\(fourth.stderr)")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "x")
    }

    @Test func aFullDiskEndsARecordingClearlyAndWhatWasWrittenReplays() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mnt = dir + "/small"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        // A 16 KiB filesystem (tmpfs; needs root, as the tests on /dev/kvm do here).
        let mounted = try runProcess("/bin/mount", ["-t", "tmpfs", "-o", "size=16k", "tmpfs", mnt])
        try #require(mounted.status == 0, "cannot mount a small tmpfs to fill: \(mounted.stderr)")
        defer { _ = try? runProcess("/bin/umount", [mnt]) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        let file = mnt + "/rec.jsonl.gz"
        let r = try Binary.run(["record", socket, "-o", file, "--duration", "60s"])
        #expect(r.status == 2 && r.stderr.contains("No space left on device"), "\(r.stderr)")
        #expect(r.stderr.contains("replays up to the last flush"))
        let replay = try Binary.run(["replay", file, "--dump-at", "end"])
        #expect(replay.status == 0, "\(replay.stderr)")
        #expect(replay.stderr.contains("not finished") || replay.stderr.contains("incomplete") || replay.stderr.contains("no end entry"), "\(replay.stderr)")
        let s = try parseJSON(replay.stdout)
        #expect(s["memslots"]?.arrayValue?.isEmpty == false, "the opening snapshot replays")
        #expect(vmm.isRunning)
    }

    @Test func aGuestThatShutsDownLeavesTheVMMUpAndQueryable() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/vm.sock"
        let vmm = try startVMM(socket, ["--allow-mutations", "--allow-fault-injection"], log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(socket); echo VMSCOPE-EXIT=$?; sleep 60", width: 200, height: 50)
        defer { t.kill() }
        _ = t.waitFor(20) { $0.contains("running") }
        let c = try ControlClient(path: socket)
        defer { c.close() }
        // A machine check the guest's handler cannot clear (MCIP stays set, kvm-facts.md), then a second one:
        // a triple fault, so KVM exits with SHUTDOWN.
        _ = try c.execute("inject-fault", .object([("kind", .string("mce")), ("vcpu", .i(0)), ("gpa", .u(0x200000))]))
        Thread.sleep(forTimeInterval: 0.5)
        _ = try c.execute("inject-fault", .object([("kind", .string("mce")), ("vcpu", .i(0)), ("gpa", .u(0x200000))]))
        var state = ""
        for _ in 0..<100 where state != "shutdown" {
            state = (try c.execute("query-vcpus").arrayValue?.first { $0["index"]?.intValue == 0 })?["state"]?.stringValue ?? ""
            if state != "shutdown" { usleep(50_000) }
        }
        #expect(state == "shutdown")
        let screen = t.waitFor(5) { $0.contains("shutdown") }
        #expect(screen.contains("shutdown"), "the vCPU pane shows it: \(screen)")
        // The VMM stays up, the other vCPU runs on, and everything answers.
        #expect(vmm.isRunning)
        #expect(try c.execute("query-vm")["vcpus"]?.intValue == 2)
        #expect(try c.execute("query-snapshot")["memslots"]?.arrayValue?.isEmpty == false)
        let other = try c.execute("query-vcpus").arrayValue?.first { $0["index"]?.intValue == 1 }
        #expect(other?["state"]?.stringValue != "shutdown" && other?["state"]?.stringValue != "error")
    }
}
