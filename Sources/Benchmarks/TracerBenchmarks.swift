import ControlProtocol
import Foundation
import ProcessSupport
import Schema

/// Issue 32's tracing peer: `vmscope trace PID` against `trace-cmd record` (Debian's trace-cmd) on the same
/// process and events (`kvm_userspace_exit` and `kvm_mmio`, what fires for every exit the VMM's guest makes), one
/// after the other on the same running VMM: the guest's progress under each (its heartbeats a second in a traced
/// window, over those of the untraced windows either side of it), the tracer's CPU (it and its child processes over
/// the window; and over its whole run, start-up to its end after SIGINT) and what each recorded and lost (the
/// kernel's `missed_events` for vmscope; trace-cmd's bytes and per-CPU `overrun`).
/// trace-cmd's recorders wake seldom (the kernel's buffer holds the events until they do), so its CPU over a window
/// can read 0; its whole run's is given beside it.
///
/// Part of `--only peers`, where kvm_stat starts: under PVM trace-cmd cannot start either (it must write
/// /proc/sys/kernel/ftrace_enabled, which this host refuses), so it runs in the lab with the rest of the group.
func tracerBenchmarks(_ sizes: BenchSizes, vmscope: String, bench: String, vmm: pid_t, socket: String, dir: String) throws -> [BenchResult] {
    let traceCmd = "/usr/bin/trace-cmd"
    guard access(traceCmd, X_OK) == 0 else {
        return [BenchResult(name: "peers-trace-progress-vs-trace-cmd", value: .nan, unit: "ratio",
                            note: "skipped: trace-cmd is not installed (Debian's trace-cmd; .ci/run installs it)")]
    }
    let client = try ControlClient(path: socket, timeoutMs: 30_000)
    defer { client.close() }
    func beats() throws -> UInt64 { try guestHeartbeats(client) }
    let seconds = sizes.repetitions > 10 ? 10.0 : 3.0
    /// Heartbeats a second over `seconds`.
    func progress() throws -> Double {
        let b0 = try beats(), t0 = nowNs()
        Thread.sleep(forTimeInterval: seconds)
        return Double(try beats() &- b0) / (Double(nowNs() - t0) / 1e9)
    }
    typealias Window = (beats: Double, cpuMsPerS: Double, wholeMsPerS: Double, out: String)
    /// `argv` traced over a window, once it is tracing (`ready`; a Swift start takes seconds on the lab's emulated
    /// CPUs) and a second more: the guest's progress meanwhile, the CPU of the tracer and its child
    /// processes over that window, the CPU of its whole run (start-up and end included) a second, and its output.
    func traced(_ argv: [String], _ name: String, ready: (_ pid: pid_t, _ output: String) -> Bool) throws -> Window {
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
    // The events both take, on the VMM's threads. Each traced window stands between two untraced ones, and is
    // judged against them (its heartbeats a second over theirs, averaged): the lab's emulated CPUs drift by a quarter
    // and more from one minute to the next (untraced windows of one run: 241 to 364 a second), which a median of each
    // tracer's own windows took in whole, so the verdict turned with the run (0.87× to 1.25× of trace-cmd over a
    // dozen runs). The tracers' order turns each round (ABBA), so a drift within a round falls on both alike.
    let events = ["kvm_userspace_exit", "kvm_mmio"]
    let rounds = sizes.repetitions > 10 ? 4 : 1
    /// Each tracer's windows, with the index in `untraced` of the untraced window just before each.
    var untraced: [Double] = [], ours: [(w: Window, before: Int)] = [], theirs: [(w: Window, before: Int)] = []
    func vmscopeWindow(_ r: Int) throws -> Window {
        try traced([vmscope, "trace", String(vmm), "--events", events.joined(separator: ","), "--json"], "vmscope-trace\(r)",
                   ready: { _, out in out.contains("tracing process") })
    }
    func traceCmdWindow(_ r: Int) throws -> Window {
        // `-P` names a task (the kernel's set_event_pid), not a process: every thread of the VMM, its vCPUs among them
        // (with `-P VMM-PID` alone trace-cmd records nothing of them: 0 bytes).
        let tids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(vmm)/task")) ?? [String(vmm)]).sorted()
        return try traced([traceCmd, "record"] + tids.flatMap { ["-P", $0] } + ["-o", dir + "/trace\(r).dat"] + events.flatMap { ["-e", "kvm:" + $0] },
                          "trace-cmd\(r)",
                          // It says so on stdout, which a file holds back: its per-CPU recorders say it too.
                          ready: { pid, out in out.contains("Hit Ctrl^C") || !descendants(of: pid).isEmpty })
    }
    for r in 0..<rounds {
        for vmscopeNow in r % 2 == 0 ? [true, false] : [false, true] {
            untraced.append(try progress())
            if vmscopeNow { ours.append((try vmscopeWindow(r), untraced.count - 1)) } else { theirs.append((try traceCmdWindow(r), untraced.count - 1)) }
        }
    }
    untraced.append(try progress())
    let ourDecoded = ours.compactMap { traceSummary($0.w.out)?.decoded }.reduce(0, +)
    let ourDropped = ours.compactMap { traceSummary($0.w.out)?.dropped }.reduce(0, +)
    // What trace-cmd recorded, from its summary at the end: "N bytes in size (M uncompressed)" for each CPU; and
    // what it lost, where it prints the buffers' statistics ("overrun: N").
    /// The numbers on trace-cmd's lines where `numberAt` finds one, added up.
    func sum(_ numberAt: (Substring) -> Substring.Index?) -> UInt64 {
        theirs.flatMap { $0.w.out.split(separator: "\n") }.compactMap { line -> UInt64? in
            numberAt(line).flatMap { UInt64(line[$0...].drop { $0 == " " }.prefix { $0.isNumber }) }
        }.reduce(0, +)
    }
    let recordedBytes = sum { $0.range(of: "bytes in size (")?.upperBound }
    let overruns = theirs.reduce(0) { $0 + traceCmdOverruns($1.w.out) }
    let version = (try? timedRun([traceCmd, "--version"], dir: dir, name: "trace-cmd-version"))
        .map { ($0.stdout + $0.stderr).split(separator: "\n").first { $0.contains("version") }.map(String.init) ?? "?" } ?? "?"
    func spread(_ v: [Double], _ f: String = "%.1f") -> String {
        v.count == 1 ? "one window" : String(format: "median of %d, \(f)–\(f)", v.count, v.min()!, v.max()!)
    }
    let base = median(untraced), oursBeats = ours.map(\.w.beats), theirsBeats = theirs.map(\.w.beats)
    /// Each traced window's beats over the mean of the untraced windows either side of it.
    func paces(_ windows: [(w: Window, before: Int)]) -> [Double] {
        windows.map { $0.w.beats / max((untraced[$0.before] + untraced[$0.before + 1]) / 2, 1e-9) }
    }
    let oursProgress = paces(ours), theirsProgress = paces(theirs)
    /// A tracer's windows' beats over as many untraced windows' (each window as long).
    func pooled(_ traced: [Double]) -> Double {
        traced.reduce(0, +) / Double(traced.count) / max(untraced.reduce(0, +) / Double(untraced.count), 1e-9)
    }
    let window = String(format: "%.0f s windows", seconds)
    let untracedR = BenchResult(name: "peers-trace-untraced-beats-per-s", value: base, unit: "/s",
                                note: "the guest's heartbeats a second with no tracer, a window before each traced one and after the last (\(spread(untraced))), \(window)")
    let theirsR = BenchResult(name: "peers-trace-cmd-beats-per-s", value: median(theirsBeats), unit: "/s", baseline: untracedR,
                              note: "baseline: `trace-cmd record -P TID … -e kvm:kvm_userspace_exit -e kvm:kvm_mmio` (each of the VMM's threads; \(version)), the guest's heartbeats a second meanwhile (\(spread(theirsBeats))); \(recordedBytes) bytes of events recorded (uncompressed), overrun \(overruns)")
    let order = rounds == 1 ? "one round" : "\(rounds) rounds, the tracers' order turning each round (ABBA)"
    let theirsProgressR = BenchResult(name: "peers-trace-cmd-progress", value: median(theirsProgress), unit: "of untraced",
                                      note: "baseline: the guest's pace under trace-cmd record, each window's heartbeats over those of the untraced windows either side of it (\(spread(theirsProgress, "%.3f")); \(order))")
    let theirsCPU = BenchResult(name: "peers-trace-cmd-cpu-ms-per-s", value: median(theirs.map(\.w.cpuMsPerS)), unit: "ms/s",
                                note: String(format: "baseline: trace-cmd record's CPU (it and its per-CPU recorders) a second over the window; %.1f ms a second of its whole run, start-up to its end after SIGINT", median(theirs.map(\.w.wholeMsPerS))))
    let sweep = try tracerRateSweep(sizes, vmscope: vmscope, bench: bench, traceCmd: traceCmd, version: version, dir: dir)
    return [untracedR, theirsR,
            BenchResult(name: "peers-trace-vmscope-beats-per-s", value: median(oursBeats), unit: "/s", baseline: theirsR,
                        note: "`vmscope trace PID --events kvm_userspace_exit,kvm_mmio --json` (every event decoded and written), the guest's heartbeats a second meanwhile (\(spread(oursBeats))); "
                            + "\(ourDecoded) events decoded, \(ourDropped) dropped by the kernel"),
            theirsProgressR,
            BenchResult(name: "peers-trace-vmscope-progress", value: median(oursProgress), unit: "of untraced", target: .atLeast(theirsProgressR.value), baseline: theirsProgressR,
                        note: "the guest's pace under vmscope trace, judged the same way (\(spread(oursProgress, "%.3f"))); all windows pooled: "
                            + String(format: "vmscope %.3f, trace-cmd %.3f of untraced", pooled(oursBeats), pooled(theirsBeats))),
            theirsCPU,
            BenchResult(name: "peers-trace-vmscope-cpu-ms-per-s", value: median(ours.map(\.w.cpuMsPerS)), unit: "ms/s", baseline: theirsCPU,
                        note: String(format: "vmscope trace's CPU a second over the window (it decodes every event to JSON; trace-cmd copies pages of the buffer to a file); %.1f ms a second of its whole run, start-up to its end after SIGINT", median(ours.map(\.w.wholeMsPerS))))] + sweep
}

/// The built-in guest's heartbeats so far, all its vCPUs' added up (`query-vcpus`).
func guestHeartbeats(_ client: ControlClient) throws -> UInt64 {
    try client.run(QueryVCPUs()).vcpus.reduce(0) { sum, v in
        sum + (v.guest.first { $0.0 == GuestCounter.heartbeat.rawValue }?.1 ?? 0)
    }
}

/// The counts in `vmscope trace`'s summary: "… N events decoded, M dropped by the kernel's buffer, …".
func traceSummary(_ output: String) -> (decoded: UInt64, dropped: UInt64)? {
    func number(before word: String) -> UInt64? {
        guard let r = output.range(of: " " + word) else { return nil }
        return UInt64(output[..<r.lowerBound].split(separator: " ").last ?? "")
    }
    guard let decoded = number(before: "events decoded"), let dropped = number(before: "dropped by") else { return nil }
    return (decoded, dropped)
}

/// What `trace-cmd record` says its buffers overran, added up over its per-CPU statistics at the end ("overrun: N" at
/// a line's start, not "commit overrun").
func traceCmdOverruns(_ output: String) -> UInt64 {
    output.split(separator: "\n").compactMap { line -> UInt64? in
        let t = line.drop { $0 == " " || $0 == "\t" }
        return t.hasPrefix("overrun:") ? UInt64(t.dropFirst("overrun:".count).drop { $0 == " " }.prefix { $0.isNumber }) : nil
    }.reduce(0, +)
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

/// Issue 32: the highest event rate each tracer sustains without a drop. `vmscope-bench --generate-exits` makes KVM
/// exits at a set rate from one thread (`runExitGenerator`: one I/O exit to userspace a run, so a `kvm_exit` and a
/// `kvm_userspace_exit` each), traced by `vmscope trace PID --events kvm_exit,kvm_userspace_exit --json` and by
/// `trace-cmd record -P PID -e kvm:kvm_exit -e kvm:kvm_userspace_exit`, one after the other at each rate, both with
/// the same small per-CPU buffer (`bufferKiB`: a window's events overflow it many times over, so a tracer that falls
/// behind loses events within the window, where a large buffer would hold them to the end). A step is drop-free when
/// the tracer has a `kvm_userspace_exit` for every exit the generator made and the kernel says it lost nothing.
/// Rates climb to the generator's own limit (0: as fast as it can beside the tracer); a tracer's climb ends after two
/// lossy steps. Where a tracer lost nothing at any step, its figure is a lower bound (the generator's limit beside
/// it, which its CPU lowers), and the comparison that decides is the steps one lost and the other did not.
func tracerRateSweep(_ sizes: BenchSizes, vmscope: String, bench: String, traceCmd: String, version: String, dir: String) throws -> [BenchResult] {
    let bufferKiB = 256
    let seconds = sizes.repetitions > 10 ? 10.0 : 1.0
    // Beside a tracer the generator makes at most about 5,000 exits/s in the lab (alone, 7,000 to 17,000): steps
    // asked for more all ran as fast as it could, the last one's measure.
    let rates: [Double] = sizes.repetitions > 10 ? [1_000, 2_000, 4_000, 0] : [1_000, 0]
    let events = ["kvm_exit", "kvm_userspace_exit"]
    struct Step {
        var asked: Double, made: UInt64, seconds: Double, exitsSeen: UInt64, events: UInt64, lost: UInt64
        var dropFree: Bool { lost == 0 && exitsSeen == made }
        var eventsPerS: Double { Double(events) / seconds }
    }
    /// One step: the generator started and waiting, `tracer(pid)` (nil: none) started and tracing, then the gate
    /// opened; `count` reads what the tracer had (exits to userspace, events, lost) from its output.
    func step(_ rate: Double, _ name: String, _ tracer: ((pid_t) -> [String])?, ready: @escaping (pid_t, String) -> Bool = { _, _ in true },
              count: (String) throws -> (exits: UInt64, events: UInt64, lost: UInt64) = { _ in (0, 0, 0) }) throws -> Step {
        let gate = dir + "/\(name).gate"
        unlink(gate)
        let gen = try ChildProcess([bench, "--generate-exits", String(rate), "--seconds", String(seconds), "--gate", gate],
                                   redirects: .init(stdin: "/dev/null", stdout: dir + "/\(name).gen", stderr: dir + "/\(name).generr"))
        defer { _ = gen.terminate(grace: 2) }
        func text(_ suffix: String) -> String { (try? String(contentsOfFile: dir + "/\(name).\(suffix)", encoding: .utf8)) ?? "" }
        let deadline = nowNs() + 120_000_000_000
        while gen.isRunning, !text("generr").contains("ready"), nowNs() < deadline { usleep(20_000) }
        guard text("generr").contains("ready") else { throw BenchError("the exit generator did not start: \(text("generr").suffix(400))") }
        let t = try tracer.map { try ChildProcess($0(gen.pid), redirects: .init(stdin: "/dev/null", stdout: dir + "/\(name).out", stderr: dir + "/\(name).err")) }
        defer { _ = t?.terminate(grace: 2) }
        if let t, let tracer {
            while t.isRunning, !ready(t.pid, text("out") + text("err")), nowNs() < deadline { usleep(100_000) }
            guard t.isRunning else { throw BenchError("\(tracer(gen.pid).joined(separator: " ")) ended: \(text("err").suffix(400))") }
            usleep(1_000_000)
        }
        close(open(gate, O_CREAT | O_WRONLY, 0o600))
        guard gen.wait(seconds: seconds + 120) == 0 else { throw BenchError("the exit generator failed: \(text("generr").suffix(400))") }
        // "exits N seconds S"
        let words = text("gen").split(whereSeparator: \.isWhitespace)
        guard words.count == 4, let made = UInt64(words[1]), let secs = Double(words[3]) else { throw BenchError("the exit generator said \(text("gen"))") }
        var seen = (exits: UInt64(0), events: UInt64(0), lost: UInt64(0))
        if let t {
            usleep(500_000)
            t.signal(SIGINT)
            _ = t.wait(seconds: 60) ?? t.terminate(grace: 2)
            seen = try count(text("out") + text("err"))
        }
        return Step(asked: rate, made: made, seconds: secs, exitsSeen: seen.exits, events: seen.events, lost: seen.lost)
    }
    func number(after word: String, in line: Substring) -> UInt64? {
        guard let r = line.range(of: word) else { return nil }
        return UInt64(line[r.upperBound...].drop { $0 == " " }.prefix { $0.isNumber })
    }
    let alone = try step(0, "sweep-alone", nil)
    var ours: [Step] = [], theirs: [Step] = []
    for (i, rate) in rates.enumerated() {
        if ours.suffix(2).count < 2 || ours.suffix(2).contains(where: \.dropFree) {
            ours.append(try step(rate, "sweep-vmscope\(i)", { [vmscope, "trace", String($0), "--events", events.joined(separator: ","), "--json", "--buffer-kib", String(bufferKiB)] },
                                 ready: { _, out in out.contains("tracing process") }) { out in
                // Each line of --json is one event.
                guard let (decoded, dropped) = traceSummary(out) else { throw BenchError("vmscope trace's summary: \(out.suffix(300))") }
                let lines = out.split(separator: "\n")
                return (UInt64(lines.count { $0.hasPrefix("{\"event\":\"kvm_userspace_exit\"") }), min(decoded, UInt64(lines.count { $0.hasPrefix("{\"event\":") })), dropped)
            })
        }
        if theirs.suffix(2).count < 2 || theirs.suffix(2).contains(where: \.dropFree) {
            let dat = dir + "/sweep\(i).dat"
            theirs.append(try step(rate, "sweep-trace-cmd\(i)", { [traceCmd, "record", "-P", String($0), "-b", String(bufferKiB), "-o", dat] + events.flatMap { ["-e", "kvm:" + $0] } },
                                   ready: { pid, out in out.contains("Hit Ctrl^C") || !descendants(of: pid).isEmpty }) { out in
                // What it recorded, from its own report; what the kernel lost: its per-CPU "overrun:" at the end, and
                // the report's "[LOST N EVENTS]".
                defer { unlink(dat) }
                let report = try timedRun([traceCmd, "report", "-i", dat], dir: dir, name: "sweep-report\(i)")
                guard report.status == 0 else { throw BenchError("trace-cmd report: \(report.stderr.suffix(300))") }
                let rows = report.stdout.split(separator: "\n")
                let exits = UInt64(rows.count { $0.contains("kvm_userspace_exit:") })
                let all = UInt64(rows.count { $0.contains("kvm_userspace_exit:") || $0.contains("kvm_exit:") })
                let lostInReport = rows.compactMap { number(after: "[LOST ", in: $0) }.reduce(0, +)
                return (exits, all, lostInReport + traceCmdOverruns(out))
            })
        }
    }
    func highest(_ steps: [Step]) -> Double { steps.filter(\.dropFree).map(\.eventsPerS).max() ?? 0 }
    func table(_ steps: [Step]) -> String {
        steps.map { s in
            String(format: "%@ → %.0f exits/s, %.0f events/s: %llu of %llu exits, %llu lost", s.asked == 0 ? "max" : String(format: "%.0f", s.asked),
                   Double(s.made) / s.seconds, s.eventsPerS, s.exitsSeen, s.made, s.lost)
        }.joined(separator: "; ")
    }
    func bound(_ steps: [Step]) -> String {
        steps.allSatisfy(\.dropFree) ? " (a lower bound: it lost nothing at any step, and the generator could go no faster beside it)" : ""
    }
    let lossyOnlyOurs = ours.filter { o in !o.dropFree && theirs.contains { $0.asked == o.asked && $0.dropFree } }.count
    let theirsLimited = !theirs.allSatisfy(\.dropFree)
    let untraced = BenchResult(name: "peers-trace-sweep-untraced-exits-per-s", value: Double(alone.made) / alone.seconds, unit: "/s",
                               note: String(format: "the exit generator alone, as fast as it can, no tracer (%.0f s): what the sweep's steps can reach at most", seconds))
    let theirsR = BenchResult(name: "peers-trace-cmd-drop-free-events-per-s", value: highest(theirs), unit: "/s",
                              note: "baseline: the highest event rate (kvm_exit and kvm_userspace_exit of the generator's KVM exits, one thread) `trace-cmd record -P PID -b \(bufferKiB) -e kvm:kvm_exit -e kvm:kvm_userspace_exit` (\(version)) kept every exit of\(bound(theirs)), \(String(format: "%.0f", seconds)) s a step, counted by `trace-cmd report`; asked → made: \(table(theirs))")
    return [untraced, theirsR,
            BenchResult(name: "peers-trace-drop-free-events-per-s", value: highest(ours), unit: "/s", target: theirsLimited ? .atLeast(theirsR.value) : nil, baseline: theirsR,
                        note: "`vmscope trace PID --events kvm_exit,kvm_userspace_exit --json --buffer-kib \(bufferKiB)`, the same steps\(bound(ours)); asked → made: \(table(ours))"
                            + (theirsLimited ? "" : ". trace-cmd lost nothing at any step, so its figure is no limit to be measured against: the row below decides")),
            BenchResult(name: "peers-trace-steps-lost-by-vmscope-only", value: Double(lossyOnlyOurs), unit: "steps", target: .atMost(0),
                        note: "steps of the sweep at which vmscope trace lost events and trace-cmd, asked the same rate, lost none")]
}
