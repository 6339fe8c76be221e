import Foundation
import ProcessSupport

/// What the real `vmscope attach` costs a stock QEMU it polls over QMP (QEMUPoller: the run state every second,
/// registers and KVM statistics every second while the guest runs, the rest every five): QEMU's own CPU, in
/// windows alone, then attached, then alone again, paused (-S) and running (SeaBIOS with no boot device,
/// idling). The added cost is attached minus the median of the windows alone on either side, so a drift in
/// the guest's own cost cancels. (This was a timed unit test until a loaded CI machine showed a QEMU that
/// "settled" at 27% of a core alone: a figure, not a behaviour; the poll schedule itself is unit-tested with
/// a fake clock in QEMUPollerTests.)
public func qemuPollingBenchmarks(_ sizes: BenchSizes, vmscope: String) throws -> [BenchResult] {
    guard QEMUInstance.binary != nil else {
        return [BenchResult(name: "qemu-poll-added-cpu-pct-paused", value: .nan, unit: "%", note: "skipped: qemu-system-x86_64 is not installed")]
    }
    guard TmuxPane.tmux != nil, FileManager.default.isExecutableFile(atPath: vmscope) else {
        return [BenchResult(name: "qemu-poll-added-cpu-pct-paused", value: .nan, unit: "%", note: "skipped: needs tmux and \(vmscope)")]
    }
    let full = sizes.repetitions > 10
    let windows = full ? 10 : 1
    var results: [BenchResult] = []
    for running in full ? [false, true] : [false] {
        let mode = running ? "running" : "paused"
        let qemu = try QEMUInstance(arguments: ["-machine", "q35", "-m", "512", "-smp", "3", "-nodefaults"] + (running ? [] : ["-S"]))
        defer { qemu.stop() }
        let pid = qemu.process.pid
        func shares(_ n: Int) -> [Double] {
            (0..<n).map { _ in
                let c0 = cpuSeconds(pid: pid) ?? 0, t0 = nowNs()
                usleep(1_000_000)
                return ((cpuSeconds(pid: pid) ?? 0) - c0) / (Double(nowNs() - t0) / 1e9) * 100
            }
        }
        // Past QEMU's start-up and, running, the firmware's boot attempt (seconds of a full core under PVM).
        let settleBy = nowNs() + 60_000_000_000
        while shares(1)[0] > 10, nowNs() < settleBy {}
        let before = shares(windows)
        guard let pane = try? TmuxPane("exec env LANG=C.UTF-8 \(vmscope) attach \(qemu.qmpSockets[0])", width: 200, height: 50) else {
            throw BenchError("tmux did not start")
        }
        var attachedOK = false
        let deadline = nowNs() + 15_000_000_000
        while nowNs() < deadline {
            if pane.capture().contains("rip 0x") { attachedOK = true; break }
            usleep(100_000)
        }
        guard attachedOK else { pane.kill(); throw BenchError("the inspector did not attach to QEMU:\n\(pane.capture())") }
        let attached = shares(windows)
        pane.keys("q")
        usleep(500_000)
        pane.kill()
        let after = shares(windows)
        let alone = BenchResult(name: "qemu-alone-cpu-pct-\(mode)", value: median(before + after), unit: "%",
                                note: "baseline: QEMU \(mode) (q35, 3 vCPUs, -accel \(qemu.accelerator)) with no client; median of \(2 * windows) 1 s windows, "
                                    + String(format: "%.2f–%.2f", (before + after).min()!, (before + after).max()!))
        let with = median(attached)
        results.append(alone)
        results.append(BenchResult(name: "qemu-attached-cpu-pct-\(mode)", value: with, unit: "%", baseline: alone,
                                   note: "the same QEMU with vmscope attach polling it; median of \(windows) 1 s windows, "
                                       + String(format: "%.2f–%.2f", attached.min()!, attached.max()!)))
        results.append(BenchResult(name: "qemu-poll-added-cpu-pct-\(mode)", value: with - alone.value, unit: "%", target: .atMost(1),
                                   note: "what the inspector's polling adds to QEMU \(mode): attached minus alone"))
    }
    return results
}
