import ControlProtocol
import Foundation
import ProcessSupport
import Synchronization

/// `vmscope top --metrics` as Prometheus would use it: scraped every 5 s while vmscope's VMM and a stock QEMU run.
/// What the exporter process costs (CPU seconds over the window, as a share of one core), against the VMM it watches
/// (baseline, same window), and how long each scrape takes.
public func exporterBenchmarks(_ sizes: BenchSizes, vmscope: String) throws -> [BenchResult] {
    guard FileManager.default.fileExists(atPath: "/dev/kvm"), getuid() == 0, FileManager.default.isExecutableFile(atPath: vmscope) else {
        return [BenchResult(name: "exporter-cpu-percent", value: .nan, unit: "% core", note: "skipped: needs root, /dev/kvm and \(vmscope)")]
    }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-bench-exporter-\(getpid())").path
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let socket = dir + "/vmm.sock"
    let vmm = try ChildProcess([vmscope, "vmm", "--socket", socket, "--ram", "64M"],
                               redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: dir + "/vmm.log"))
    defer { _ = vmm.terminate() }
    // QEMU with KVM running SeaBIOS (its exits are what `top` traces); a reset every second keeps it from going
    // quiet once SeaBIOS finds nothing to boot.
    let qemu = QEMUInstance.binary == nil ? nil : try? QEMUInstance(arguments: ["-machine", "pc", "-m", "64", "-nodefaults", "-smp", "2"])
    defer { qemu?.stop() }
    let resetting = Atomic<Bool>(true)
    if let qemu, let c = try? ControlClient(path: qemu.qmpSockets[0]) {
        Thread {
            while resetting.load(ordering: .relaxed) { _ = try? c.execute("system_reset"); usleep(1_000_000) }
            c.close()
        }.start()
    }
    defer { resetting.store(false, ordering: .relaxed) }
    let what = "vmscope's VMM" + (qemu != nil ? " and a stock QEMU (KVM, 2 vCPUs, reset every second)" : " (no QEMU here)")
    // Collected as often as Prometheus scrapes (5 s: the target), then at `top`'s default 1 s (context). Smoke runs
    // take one short window.
    var results = try exporterWindow(sizes, vmscope: vmscope, vmm: vmm, what: what, collectEvery: sizes.repetitions > 10 ? 5 : 1,
                                     dir: dir, named: "")
    if sizes.repetitions > 10 {
        results += try exporterWindow(sizes, vmscope: vmscope, vmm: vmm, what: what, collectEvery: 1, dir: dir, named: "-interval-1s")
    }
    return results
}

/// One `top --metrics --interval collectEvery`, scraped every 5 s (1 s in smoke runs) for 60 s (5 s): its CPU against
/// the VMM's, and its scrapes' times. `named` suffixes the rows.
private func exporterWindow(_ sizes: BenchSizes, vmscope: String, vmm: ChildProcess, what: String, collectEvery: Int,
                            dir: String, named: String) throws -> [BenchResult] {
    let port = 20_000 + Int(getpid() % 20_000) + collectEvery
    let top = try ChildProcess([vmscope, "top", "--metrics", "127.0.0.1:\(port)", "--interval", String(collectEvery)],
                               redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: dir + "/top.log"))
    defer { _ = top.terminate() }
    var up = false
    for _ in 0..<200 where !up {
        up = httpGet(port: port, "/metrics", timeout: 5).body.contains("vmscope_exporter_vms")
        if !up { usleep(50_000) }
    }
    guard up else {
        let log = (try? String(contentsOfFile: dir + "/top.log", encoding: .utf8)) ?? ""
        return [BenchResult(name: "exporter-cpu-percent", value: .nan, unit: "% core", note: "skipped: top --metrics did not serve: \(log.prefix(300))")]
    }
    // The window: 60 s (12 scrapes at Prometheus's common 5 s interval); 5 s in smoke runs.
    let window = sizes.repetitions > 10 ? 60.0 : 5.0
    let scrapeEvery = sizes.repetitions > 10 ? 5.0 : 1.0
    let t0 = nowNs()
    let top0 = cpuSeconds(pid: top.pid) ?? 0, vmm0 = cpuSeconds(pid: vmm.pid) ?? 0
    var latencies: [Double] = []
    var bytes = 0
    var nextScrape = 0.0
    while Double(nowNs() - t0) / 1e9 < window {
        let elapsed = Double(nowNs() - t0) / 1e9
        if elapsed >= nextScrape {
            let s = httpGet(port: port, "/metrics", timeout: 5)
            if s.status == 200 { latencies.append(s.seconds * 1000); bytes = s.body.utf8.count }
            nextScrape += scrapeEvery
        }
        usleep(20_000)
    }
    let seconds = Double(nowNs() - t0) / 1e9
    let topCPU = ((cpuSeconds(pid: top.pid) ?? 0) - top0) / seconds * 100
    let vmmCPU = ((cpuSeconds(pid: vmm.pid) ?? 0) - vmm0) / seconds * 100
    let baseline = BenchResult(name: "exporter-watched-vmm-cpu-percent" + named, value: vmmCPU, unit: "% core",
                               note: "baseline: the CPU of \(what.split(separator: " and").first ?? "the VMM") it watches, same \(Int(seconds)) s window")
    latencies.sort()
    return [
        baseline,
        BenchResult(name: "exporter-cpu-percent" + named, value: topCPU, unit: "% core", target: named.isEmpty ? .atMost(1) : nil,
                    baseline: baseline,
                    note: "`vmscope top --metrics --interval \(collectEvery)`\(collectEvery == 5 ? " (collecting at the scrape interval)" : "") over \(Int(seconds)) s with \(what), scraped every \(Int(scrapeEvery)) s"),
        BenchResult(name: "exporter-scrape-median-ms" + named, value: latencies.isEmpty ? .nan : latencies[latencies.count / 2], unit: "ms",
                    target: .atMost(50), note: "GET /metrics, \(latencies.count) scrapes, \(bytes) bytes each"),
        BenchResult(name: "exporter-scrape-max-ms" + named, value: latencies.last ?? .nan, unit: "ms", target: .atMost(50),
                    note: "the slowest of the same scrapes"),
    ]
}

