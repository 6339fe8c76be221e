import Foundation
import ProcessSupport

/// What `vmscope attach libvirt:NAME` costs the domain's QEMU and libvirtd (issue 31). A command through libvirt's
/// monitor passthrough costs libvirtd about 4 ms (it rewrites the domain's status file after each), so the
/// inspector's polls space themselves by the same budget as a direct attach (a poll's wait ≤ 0.6 % of its period).
/// QEMU's and libvirtd's CPU in 1 s windows alone, attached, then alone again, on a transient domain (2 vCPUs,
/// 256 MiB, no disk: SeaBIOS idling); the added cost is attached minus the median of the windows alone. Needs a
/// libvirtd answering at qemu:///system whose QEMU can open /dev/kvm; skipped with the reason otherwise.
public func libvirtPollingBenchmarks(_ sizes: BenchSizes, vmscope: String) throws -> [BenchResult] {
    let headline = "libvirt-poll-added-cpu-pct-qemu"
    func skipped(_ why: String) -> [BenchResult] { [BenchResult(name: headline, value: .nan, unit: "%", note: "skipped: \(why)")] }
    guard TmuxPane.tmux != nil, FileManager.default.isExecutableFile(atPath: vmscope) else { return skipped("needs tmux and \(vmscope)") }
    let dir = NSTemporaryDirectory() + "vmscope-bench-libvirt-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    func virsh(_ args: [String]) -> Int32 {
        (try? ChildProcess.run(["/usr/bin/virsh", "-c", "qemu:///system"] + args,
                               redirects: .init(stdin: "/dev/null", stdout: dir + "/virsh.out", stderr: dir + "/virsh.err"))) ?? -1
    }
    guard access("/usr/bin/virsh", X_OK) == 0 else { return skipped("/usr/bin/virsh is not installed (libvirt-clients)") }
    guard virsh(["list"]) == 0 else {
        return skipped("no libvirtd answers at qemu:///system (virsh list: \((try? String(contentsOfFile: dir + "/virsh.err", encoding: .utf8)) ?? "did not run"); start it: virtlogd --daemon; libvirtd --daemon)")
    }
    guard let libvirtd = processes(named: "libvirtd").first else { return skipped("libvirtd answers but no process is named libvirtd") }
    let name = "vmscope-bench-\(getpid())"
    try """
    <domain type='kvm'><name>\(name)</name><memory unit='MiB'>256</memory><vcpu>2</vcpu>
    <os><type arch='x86_64' machine='pc'>hvm</type></os><devices><serial type='pty'/></devices></domain>
    """.write(toFile: dir + "/domain.xml", atomically: true, encoding: .utf8)
    guard virsh(["create", dir + "/domain.xml"]) == 0 else {
        return skipped("virsh create: \((try? String(contentsOfFile: dir + "/virsh.err", encoding: .utf8)) ?? "")")
    }
    defer { _ = virsh(["destroy", name]) }
    guard let qemu = (try? String(contentsOfFile: "/run/libvirt/qemu/\(name).pid", encoding: .utf8)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
        return skipped("no pid file for the domain's QEMU in /run/libvirt/qemu")
    }
    let full = sizes.repetitions > 10
    let windows = full ? 10 : 1
    func shares(_ n: Int) -> [(qemu: Double, libvirtd: Double)] {
        (0..<n).map { _ in
            let q0 = cpuSeconds(pid: qemu) ?? 0, l0 = cpuSeconds(pid: libvirtd) ?? 0, t0 = nowNs()
            usleep(1_000_000)
            let s = Double(nowNs() - t0) / 1e9
            return (((cpuSeconds(pid: qemu) ?? 0) - q0) / s * 100, ((cpuSeconds(pid: libvirtd) ?? 0) - l0) / s * 100)
        }
    }
    // Past QEMU's start and the firmware's boot attempt.
    let settleBy = nowNs() + 60_000_000_000
    while shares(1)[0].qemu > 10, nowNs() < settleBy {}
    let before = shares(windows)
    guard let pane = try? TmuxPane("exec env LANG=C.UTF-8 \(vmscope) attach libvirt:\(name)", width: 200, height: 50) else {
        throw BenchError("tmux did not start")
    }
    let screen = pane.waitFor(20) { $0.contains("rip 0x") && $0.contains("libvirt running") }
    guard screen.contains("rip 0x") else { pane.kill(); throw BenchError("the inspector did not attach through libvirt:\n\(screen)") }
    let attached = shares(windows)
    let spacing = pane.capture().split(separator: "│").first { $0.contains("polled every") }.map { $0.trimmingCharacters(in: .whitespaces) } ?? "polled every 1.0 s"
    pane.keys("q")
    usleep(500_000)
    pane.kill()
    let after = shares(windows)
    var results: [BenchResult] = []
    for (who, pick) in [("qemu", { (s: (qemu: Double, libvirtd: Double)) in s.qemu }), ("libvirtd", { (s: (qemu: Double, libvirtd: Double)) in s.libvirtd })] {
        let alone = (before + after).map(pick), with = attached.map(pick)
        let baseline = BenchResult(name: "libvirt-\(who)-alone-cpu-pct", value: median(alone), unit: "%",
                                   note: "baseline: \(who) with the domain (2 vCPUs, 256 MiB, idling) and no vmscope; median of \(alone.count) 1 s windows, "
                                       + String(format: "%.2f–%.2f", alone.min()!, alone.max()!))
        results.append(baseline)
        results.append(BenchResult(name: "libvirt-\(who)-attached-cpu-pct", value: median(with), unit: "%", baseline: baseline,
                                   note: "the same with vmscope attach libvirt:NAME polling through libvirt (\(spacing)); median of \(with.count) 1 s windows, "
                                       + String(format: "%.2f–%.2f", with.min()!, with.max()!)))
        results.append(BenchResult(name: "libvirt-poll-added-cpu-pct-\(who)", value: median(with) - median(alone), unit: "%", target: .atMost(1),
                                   note: "what the inspector's polling through libvirt adds to \(who): attached minus alone"))
    }
    return results
}

/// Pids of the processes whose `comm` is `name`.
func processes(named name: String) -> [Int32] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }.filter { pid in
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == name
    }
}
