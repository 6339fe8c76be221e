import ControlProtocol
import Foundation
import ProcessSupport
import Schema

/// Issue 32's tracing peer: `vmscope trace PID` against `trace-cmd record` (Debian's trace-cmd) on the same
/// process and events (`kvm_userspace_exit` and `kvm_mmio`, what fires for every exit the VMM's guest makes), one
/// after the other on the same running VMM: the guest's progress under each (its heartbeats a second, against a
/// window with no tracer), the tracer's CPU (it and its child processes over the window; and over its whole run,
/// start-up to its end after SIGINT) and what each recorded and lost (the kernel's `missed_events` for vmscope; trace-cmd's bytes and per-CPU `overrun`).
/// trace-cmd's recorders wake seldom (the kernel's buffer holds the events until they do), so its CPU over a window
/// can read 0; its whole run's is given beside it.
///
/// Part of `--only peers`, where kvm_stat starts: under PVM trace-cmd cannot start either (it must write
/// /proc/sys/kernel/ftrace_enabled, which this host refuses), so it runs in the lab with the rest of the group.
func tracerBenchmarks(_ sizes: BenchSizes, vmscope: String, vmm: pid_t, socket: String, dir: String) throws -> [BenchResult] {
    let traceCmd = "/usr/bin/trace-cmd"
    guard access(traceCmd, X_OK) == 0 else {
        return [BenchResult(name: "peers-trace-progress-vs-trace-cmd", value: .nan, unit: "ratio",
                            note: "skipped: trace-cmd is not installed (Debian's trace-cmd; .ci/run installs it)")]
    }
    let client = try ControlClient(path: socket, timeoutMs: 30_000)
    defer { client.close() }
    func beats() throws -> UInt64 {
        try client.run(QueryVCPUs()).vcpus.reduce(0) { sum, v in
            sum + (v.guest.first { $0.0 == GuestCounter.heartbeat.rawValue }?.1 ?? 0)
        }
    }
    let seconds = sizes.repetitions > 10 ? 10.0 : 3.0
    /// Heartbeats a second over `seconds`.
    func progress() throws -> Double {
        let b0 = try beats(), t0 = nowNs()
        Thread.sleep(forTimeInterval: seconds)
        return Double(try beats() &- b0) / (Double(nowNs() - t0) / 1e9)
    }
    /// `argv` traced over a window, once it is tracing (`ready`; a Swift start takes seconds on the lab's emulated
    /// CPUs) and a second more: the guest's progress meanwhile, the CPU of the tracer and its child
    /// processes over that window, the CPU of its whole run (start-up and end included) a second, and its output.
    func traced(_ argv: [String], _ name: String, ready: (_ pid: pid_t, _ output: String) -> Bool) throws -> (beats: Double, cpuMsPerS: Double, wholeMsPerS: Double, out: String) {
        func output() -> String {
            ((try? String(contentsOfFile: dir + "/\(name).out", encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: dir + "/\(name).err", encoding: .utf8)) ?? "")
        }
        let before = childrenCPUMs(), start = nowNs()
        let p = try ChildProcess(argv, redirects: .init(stdin: "/dev/null", stdout: dir + "/\(name).out", stderr: dir + "/\(name).err"))
        let deadline = nowNs() + 120_000_000_000
        while p.isRunning, !ready(p.pid, output()), nowNs() < deadline { usleep(100_000) }
        usleep(1_000_000)
        guard p.isRunning, ready(p.pid, output()) else {
            _ = p.terminate(grace: 2)
            throw BenchError("\(argv.joined(separator: " ")) did not start tracing: \(output().suffix(400))")
        }
        let tree = [p.pid] + descendants(of: p.pid)
        func cpu() -> Double { tree.compactMap { cpuSeconds(pid: $0) }.reduce(0, +) }
        let c0 = cpu(), t0 = nowNs()
        let b = try progress()
        let c1 = cpu(), t1 = nowNs()
        p.signal(SIGINT)
        _ = p.wait(seconds: 30) ?? p.terminate(grace: 2)
        let wall = Double(nowNs() - start) / 1e9
        return (b, (c1 - c0) * 1000 / (Double(t1 - t0) / 1e9), (childrenCPUMs() - before) / wall, output())
    }
    // The events both take, on the VMM's threads. Rounds of three windows (none, vmscope, trace-cmd), so a drift in
    // the guest's pace (the lab's emulated CPUs vary by half from one window to the next) falls on all three alike.
    let events = ["kvm_userspace_exit", "kvm_mmio"]
    let rounds = sizes.repetitions > 10 ? 3 : 1
    var untraced: [Double] = [], ours: [(beats: Double, cpuMsPerS: Double, wholeMsPerS: Double, out: String)] = []
    var theirs: [(beats: Double, cpuMsPerS: Double, wholeMsPerS: Double, out: String)] = []
    for r in 0..<rounds {
        untraced.append(try progress())
        ours.append(try traced([vmscope, "trace", String(vmm), "--events", events.joined(separator: ","), "--json"], "vmscope-trace\(r)",
                               ready: { _, out in out.contains("tracing process") }))
        // `-P` names a task (the kernel's set_event_pid), not a process: every thread of the VMM, its vCPUs among them
        // (with `-P VMM-PID` alone trace-cmd records nothing of them: 0 bytes).
        let tids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(vmm)/task")) ?? [String(vmm)]).sorted()
        theirs.append(try traced([traceCmd, "record"] + tids.flatMap { ["-P", $0] } + ["-o", dir + "/trace\(r).dat"] + events.flatMap { ["-e", "kvm:" + $0] },
                                 "trace-cmd\(r)",
                                 // It says so on stdout, which a file holds back: its per-CPU recorders say it too.
                                 ready: { pid, out in out.contains("Hit Ctrl^C") || !descendants(of: pid).isEmpty }))
    }
    untraced.append(try progress())
    // vmscope trace's summary: "… N events decoded, M dropped by the kernel's buffer, …".
    func number(before word: String, in text: String) -> UInt64? {
        guard let r = text.range(of: " " + word) else { return nil }
        return UInt64(text[..<r.lowerBound].split(separator: " ").last ?? "")
    }
    let ourDecoded = ours.compactMap { number(before: "events decoded", in: $0.out) }.reduce(0, +)
    let ourDropped = ours.compactMap { number(before: "dropped by", in: $0.out) }.reduce(0, +)
    // What trace-cmd recorded, from its summary at the end: "N bytes in size (M uncompressed)" for each CPU; and
    // what it lost, where it prints the buffers' statistics ("overrun: N").
    /// The numbers on trace-cmd's lines where `numberAt` finds one, added up.
    func sum(_ numberAt: (Substring) -> Substring.Index?) -> UInt64 {
        theirs.flatMap { $0.out.split(separator: "\n") }.compactMap { line -> UInt64? in
            numberAt(line).flatMap { UInt64(line[$0...].drop { $0 == " " }.prefix { $0.isNumber }) }
        }.reduce(0, +)
    }
    let recordedBytes = sum { $0.range(of: "bytes in size (")?.upperBound }
    let overruns = sum { line in   // "overrun: N" at the line's start (not "commit overrun")
        let t = line.drop { $0 == " " || $0 == "\t" }
        return t.hasPrefix("overrun:") ? t.index(t.startIndex, offsetBy: "overrun:".count) : nil
    }
    let version = (try? timedRun([traceCmd, "--version"], dir: dir, name: "trace-cmd-version"))
        .map { ($0.stdout + $0.stderr).split(separator: "\n").first { $0.contains("version") }.map(String.init) ?? "?" } ?? "?"
    func spread(_ v: [Double]) -> String { v.count == 1 ? "one window" : String(format: "median of %d, %.1f–%.1f", v.count, v.min()!, v.max()!) }
    let base = median(untraced), oursBeats = ours.map(\.beats), theirsBeats = theirs.map(\.beats)
    let window = String(format: "%.0f s windows", seconds)
    let untracedR = BenchResult(name: "peers-trace-untraced-beats-per-s", value: base, unit: "/s",
                                note: "the guest's heartbeats a second with no tracer, a window before each round and after the last (\(spread(untraced))), \(window)")
    let theirsR = BenchResult(name: "peers-trace-cmd-beats-per-s", value: median(theirsBeats), unit: "/s", baseline: untracedR,
                              note: "baseline: `trace-cmd record -P TID … -e kvm:kvm_userspace_exit -e kvm:kvm_mmio` (each of the VMM's threads; \(version)), the guest's heartbeats a second meanwhile (\(spread(theirsBeats))); \(recordedBytes) bytes of events recorded (uncompressed), overrun \(overruns)")
    let theirsCPU = BenchResult(name: "peers-trace-cmd-cpu-ms-per-s", value: median(theirs.map(\.cpuMsPerS)), unit: "ms/s",
                                note: String(format: "baseline: trace-cmd record's CPU (it and its per-CPU recorders) a second over the window; %.1f ms a second of its whole run, start-up to its end after SIGINT", median(theirs.map(\.wholeMsPerS))))
    return [untracedR, theirsR,
            BenchResult(name: "peers-trace-vmscope-beats-per-s", value: median(oursBeats), unit: "/s", target: .atLeast(theirsR.value), baseline: theirsR,
                        note: "`vmscope trace PID --events kvm_userspace_exit,kvm_mmio --json` (every event decoded and written), the guest's heartbeats a second meanwhile (\(spread(oursBeats))); "
                            + "\(ourDecoded) events decoded, \(ourDropped) dropped by the kernel; "
                            + String(format: "%.3f of untraced, trace-cmd %.3f", median(oursBeats) / max(base, 1e-9), theirsR.value / max(base, 1e-9))),
            theirsCPU,
            BenchResult(name: "peers-trace-vmscope-cpu-ms-per-s", value: median(ours.map(\.cpuMsPerS)), unit: "ms/s", baseline: theirsCPU,
                        note: String(format: "vmscope trace's CPU a second over the window (it decodes every event to JSON; trace-cmd copies pages of the buffer to a file); %.1f ms a second of its whole run, start-up to its end after SIGINT", median(ours.map(\.wholeMsPerS))))]
}

/// The processes below `pid` (children, their children, …), from /proc's parent links.
func descendants(of pid: pid_t) -> [pid_t] {
    var parent: [pid_t: pid_t] = [:]
    for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
        guard let p = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { continue }
        // "pid (comm) state ppid …": the name may hold spaces and parentheses; what follows the last ')' does not.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        if fields.count > 1, let pp = pid_t(fields[1]) { parent[p] = pp }
    }
    var out: [pid_t] = [], frontier = [pid]
    while let next = frontier.popLast() {
        let children = parent.filter { $0.value == next }.map(\.key)
        out += children
        frontier += children
    }
    return out
}
