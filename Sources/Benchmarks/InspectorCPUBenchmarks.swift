import Foundation
import ProcessSupport
import Synchronization
import VMM

/// The real `vmscope attach` in a 200×60 tmux pane: its CPU use attached to an idle VM, then under a stream of
/// 100,000 fault records a second (synthetic records appended to the VMM's fault ring by a feeder thread, sent
/// by the real control server), with its RSS sampled through the stream.
public func inspectorCPUBenchmarks(_ sizes: BenchSizes, vmscope: String, devicePath: String = "/dev/kvm") throws -> [BenchResult] {
    guard FileManager.default.fileExists(atPath: devicePath) else {
        return [BenchResult(name: "idle-cpu-pct", value: .nan, unit: "%", note: "skipped: \(devicePath) does not exist")]
    }
    guard TmuxPane.tmux != nil, FileManager.default.isExecutableFile(atPath: vmscope) else {
        return [BenchResult(name: "idle-cpu-pct", value: .nan, unit: "%", note: "skipped: needs tmux and \(vmscope)")]
    }
    let full = sizes.repetitions > 10
    let vm = try liveVM(devicePath: devicePath) { c in c.faultRingCapacity = 1 << 17 }
    defer { vm.stop() }
    _ = try vm.vmm.vcpuControl(index: nil, action: .pause)
    // `exec`, so the pane's process is the inspector itself.
    guard let pane = try? TmuxPane("exec env LANG=C.UTF-8 TERM=xterm-256color \(vmscope) attach \(vm.path)", width: 200, height: 60) else {
        return [BenchResult(name: "idle-cpu-pct", value: .nan, unit: "%", note: "skipped: tmux did not start")]
    }
    defer { pane.kill() }
    var pid: Int32?
    let deadline = nowNs() + 10_000_000_000
    while nowNs() < deadline {
        if pane.capture().contains("2 Faults"), let p = pane.pid { pid = p; break }
        usleep(100_000)
    }
    guard let pid else { throw BenchError("the inspector did not start in tmux:\n\(pane.capture())") }

    /// Share of one core over `seconds`, sampled in windows of `window` s (median of the windows).
    func cpuPercent(seconds: Double, window: Double = 1) -> Double {
        var shares: [Double] = []
        var left = seconds
        while left > 0 {
            let c0 = cpuSeconds(pid: pid) ?? 0, t0 = nowNs()
            usleep(useconds_t(window * 1e6))
            let c1 = cpuSeconds(pid: pid) ?? 0
            shares.append((c1 - c0) / (Double(nowNs() - t0) / 1e9) * 100)
            left -= window
        }
        return median(shares)
    }
    usleep(1_000_000)
    let idle = cpuPercent(seconds: full ? 20 : 2, window: full ? 5 : 1)
    let idleResult = BenchResult(name: "idle-cpu-pct", value: idle, unit: "%", target: .atMost(1),
                                 note: "vmscope attach (200×60 tmux pane) on a VM with its vCPUs paused; median of \(full ? 5 : 1) s windows")

    // The stream: 1,000 records every 10 ms from a feeder thread, as fast vCPUs would leave them.
    final class Flag: Sendable { let raised = Atomic(false) }
    let flag = Flag()
    let feeder = Thread {
        var next = nowNs()
        var gfn: UInt64 = 0
        while !flag.raised.load(ordering: .relaxed) {
            for _ in 0..<1000 {
                vm.vmm.faults.append(FaultRecord(timeNs: nowNs(), vcpu: Int(gfn % 2), gpa: 0x100000 + (gfn % 4096) * 4096,
                                                 size: 4096, flags: 8, isPrivate: true, access: .write, errno: nil,
                                                 source: .vmm, exit: .mmio, attribute: .shared, slot: 1, action: .reported))
                gfn &+= 1
            }
            next += 10_000_000
            let now = nowNs()
            if next > now { usleep(useconds_t((next - now) / 1000)) }
        }
    }
    let total0 = vm.vmm.faults.total
    feeder.start()
    defer { flag.raised.store(true, ordering: .relaxed) }
    let streamSeconds = full ? 60.0 : 3.0
    let warm = full ? 10.0 : 1.0
    let t0 = nowNs()
    usleep(useconds_t(warm * 1e6))
    let rssWarm = residentBytes(pid: pid) ?? 0
    let streamCPU = cpuPercent(seconds: streamSeconds - warm)
    let rssEnd = residentBytes(pid: pid) ?? 0
    let total = vm.vmm.faults.total - total0
    let rate = Double(total) / (Double(nowNs() - t0) / 1e9)
    flag.raised.store(true, ordering: .relaxed)
    let screen = pane.capture()
    // The status bar's "dropped N": records the server could not deliver to this inspector, announced to it.
    let dropped = screen.range(of: "dropped ").map { r in UInt64(screen[r.upperBound...].prefix { $0.isNumber }) ?? 0 }
    return [
        idleResult,
        BenchResult(name: "stream-cpu-pct", value: streamCPU, unit: "%", target: .atMost(50), baseline: idleResult,
                    note: String(format: "the same inspector under %.0f fault records/s for %.0f s (synthetic records in the VMM's ring, real control server); %@", rate, streamSeconds,
                                 dropped.map { "\($0) of \(total) records announced as dropped" } ?? "dropped count not on screen")),
        BenchResult(name: "stream-dropped-records", value: dropped.map(Double.init) ?? .nan, unit: "records", target: .atMost(0),
                    note: String(format: "records of the %.0f-a-second stream the server announced as dropped to the inspector over %.0f s (the status bar's count): it keeps up, and so does the server's batching", rate, streamSeconds)),
        BenchResult(name: "stream-rss-growth-mib", value: (Double(rssEnd) - Double(rssWarm)) / Double(1 << 20), unit: "MiB",
                    target: .atMost(8),
                    note: String(format: "inspector RSS %.1f MiB after %.0f s of the stream, %.1f MiB at its end (flat: bounded fault list and marks)",
                                 Double(rssWarm) / Double(1 << 20), warm, Double(rssEnd) / Double(1 << 20))),
    ]
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
