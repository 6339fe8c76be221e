import ControlProtocol
import Foundation
import HostTracing
import ProcessSupport
import Schema

/// Issue 29: what tracing any VM costs it, measured where the any-VM views have their events (the lab: Linux 7.3's
/// KVM on emulated SVM with nested paging, where `kvm_page_fault` and `kvm_vm_set_mem_attributes` fire) on a quiet
/// host, release build. The VM is vmscope's VMM on the kernel engine, 2 vCPUs, its built-in guest converting its
/// bounce buffers and touching pages through the wrong view (so memory faults, conversions and the page-fault storms
/// that follow each conversion are all in the stream).
///
/// Rounds of three windows: none, `vmscope trace PID --paired-only --json` (the events the traced map, faults and
/// conversion steps need, paired), `vmscope trace PID --json` (every event decoded and written), the two tracers'
/// order alternating from round to round, after the guest's pace has settled; each tracer a fresh
/// process, measured once it says it is tracing and its code has run a while. A round's ratio is its traced window's
/// heartbeats a second over the mean of the untraced windows either side of it, so the lab's drift (its emulated CPUs
/// get what the host's scheduler gives QEMU) falls on both; the figure is the median round, with the spread.
///
/// The unit test `MapAlarmChecks.tracingCostsTheGuestLittleOfItsProgress` measures the same in a debug build beside
/// the rest of `swift test` (a loaded host), as a bound only; this is the figure.
public func labTracingCostBenchmarks(_ sizes: BenchSizes, vmscope: String, bench: String) throws -> [BenchResult] {
    let headline = "lab-trace-paired-progress"
    func skipped(_ why: String) -> [BenchResult] { [BenchResult(name: headline, value: .nan, unit: "ratio", note: "skipped: \(why)")] }
    let dir = NSTemporaryDirectory() + "vmscope-bench-tracecost-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    guard insideTheLab else {
        let lab = try timedRun([vmscope, "lab", "exec", "--timeout", "1800", "--", bench, "--json", "--only", "tracecost"] + (sizes.repetitions > 10 ? [] : ["--smoke"]),
                               dir: dir, name: "lab")
        struct Report: Decodable { var results: [BenchResult] }
        guard lab.status == 0, let start = lab.stdout.firstIndex(of: "{"),
              let report = try? JSONDecoder().decode(Report.self, from: Data(lab.stdout[start...].utf8)) else {
            return skipped("the lab run failed (exit \(lab.status)): \(lab.stderr.suffix(400))")
        }
        return report.results
    }
    let kernel = "in the lab (Linux \(RawTraceRecording.runningKernel), kvm_amd on QEMU TCG, release build): "
    let socket = dir + "/vm.sock"
    let vmm = try startBenchVMM(vmscope, socket: socket, dir: dir, extra: ["--attribute-engine", "kernel", "--allow-mutations"])
    defer { _ = vmm.terminate(grace: 5) }
    let client = try ControlClient(path: socket, timeoutMs: 60_000)
    defer { client.close() }
    func beats() throws -> UInt64 { try guestHeartbeats(client) }
    let beating = nowNs() + 120_000_000_000
    while try beats() < 5 {
        guard nowNs() < beating else { throw BenchError("the guest does not beat") }
        usleep(500_000)
    }
    let seconds = sizes.repetitions > 10 ? 8.0 : 2.0
    /// Heartbeats a second over a window of `seconds`, and the CPU seconds `pid` (all its threads) took meanwhile.
    func window(tracer pid: pid_t? = nil) throws -> (beats: Double, cpu: Double) {
        let b0 = try beats(), t0 = nowNs(), c0 = pid.flatMap { cpuSeconds(pid: $0) } ?? 0
        Thread.sleep(forTimeInterval: seconds)
        let c1 = pid.flatMap { cpuSeconds(pid: $0) } ?? 0
        let wall = Double(nowNs() - t0) / 1e9
        return (Double(try beats() &- b0) / wall, (c1 - c0) / wall)
    }
    struct Traced { var beats: Double, cpu: Double, decoded: UInt64, dropped: UInt64 }
    /// `trace` started, waited for until it is tracing and 3 s more (its code paged in and run once), one window.
    func traced(_ extra: [String], _ name: String) throws -> Traced {
        let err = dir + "/\(name).err"
        func said() -> String { (try? String(contentsOfFile: err, encoding: .utf8)) ?? "" }
        let p = try ChildProcess([vmscope, "trace", String(vmm.pid), "--json"] + extra, redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: err))
        let deadline = nowNs() + 120_000_000_000
        while p.isRunning, !said().contains("tracing process"), nowNs() < deadline { usleep(100_000) }
        guard p.isRunning, said().contains("tracing process") else {
            _ = p.terminate(grace: 2)
            throw BenchError("vmscope trace \(extra.joined(separator: " ")) did not start tracing: \(said().suffix(400))")
        }
        Thread.sleep(forTimeInterval: 3)
        let w = try window(tracer: p.pid)
        p.signal(SIGINT)
        _ = p.wait(seconds: 30) ?? p.terminate(grace: 2)
        let summary = traceSummary(said())
        return Traced(beats: w.beats, cpu: w.cpu, decoded: summary?.decoded ?? 0, dropped: summary?.dropped ?? 0)
    }
    // The guest's pace climbs for a minute or two after it starts (untraced, 8 s windows from 25 s on: 308, 375, 527
    // beats a second over three minutes; the lab's translated code warming up): rounds begin once it has.
    if sizes.repetitions > 10 { Thread.sleep(forTimeInterval: 90) }
    let rounds = sizes.repetitions > 10 ? 6 : 1
    var untraced: [Double] = [], paired: [Traced] = [], every: [Traced] = []
    for r in 0..<rounds {
        untraced.append(try window().beats)
        // The two tracers' order alternates, so what is left of the drift falls on both alike.
        if r % 2 == 0 {
            paired.append(try traced(["--paired-only"], "paired\(r)"))
            every.append(try traced([], "every\(r)"))
        } else {
            every.append(try traced([], "every\(r)"))
            paired.append(try traced(["--paired-only"], "paired\(r)"))
        }
    }
    untraced.append(try window().beats)
    // Each round's traced windows against the untraced windows either side of that round.
    func ratios(_ t: [Traced]) -> [Double] { t.indices.map { t[$0].beats / max((untraced[$0] + untraced[$0 + 1]) / 2, 1e-9) } }
    func spread(_ v: [Double], _ f: String = "%.3f", of what: String = "rounds") -> String {
        v.count == 1 ? "one" : "median of \(v.count) \(what), " + String(format: "\(f)–\(f)", v.min()!, v.max()!)
    }
    let cpus = Double(ProcessInfo.processInfo.activeProcessorCount)
    let pairedR = ratios(paired), everyR = ratios(every)
    let pairedShare = paired.map { $0.cpu / cpus }, everyShare = every.map { $0.cpu / cpus }
    let window = String(format: "%.0f s windows", seconds)
    return [
        BenchResult(name: "lab-trace-untraced-beats-per-s", value: median(untraced), unit: "/s",
                    note: kernel + "the built-in guest's heartbeats a second with no tracer, a window before each round and after the last (\(spread(untraced, "%.1f", of: "windows"))), \(window)"),
        BenchResult(name: headline, value: median(pairedR), unit: "ratio", target: .atLeast(0.95),
                    note: kernel + "`vmscope trace PID --paired-only --json`: the guest's heartbeats a second over the untraced windows either side (\(spread(pairedR))); "
                        + "\(paired.map(\.decoded).reduce(0, +)) events decoded, \(paired.map(\.dropped).reduce(0, +)) dropped by the kernel"),
        BenchResult(name: "lab-trace-paired-cpu-share", value: median(pairedShare), unit: "of the lab's CPUs",
                    note: kernel + "the paired tracer's own CPU (all its threads) over its windows, as a share of the lab's \(Int(cpus)) CPUs (\(spread(pairedShare)))"),
        BenchResult(name: "lab-trace-every-event-progress", value: median(everyR), unit: "ratio",
                    note: kernel + "`vmscope trace PID --json` (every event decoded and written, kvm_exit and kvm_mmio among them): the same ratio (\(spread(everyR))); "
                        + "\(every.map(\.decoded).reduce(0, +)) events decoded, \(every.map(\.dropped).reduce(0, +)) dropped by the kernel"),
        BenchResult(name: "lab-trace-every-event-cpu-share", value: median(everyShare), unit: "of the lab's CPUs",
                    note: kernel + "that tracer's own CPU, as a share of the lab's CPUs (\(spread(everyShare)))"),
    ]
}
