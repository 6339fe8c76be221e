import ControlProtocol
import ControlServer
import Foundation
import Inspector
import Logging
import ProcessSupport
import VMM

/// A 2-vCPU, 64 MiB VM with mutations allowed, changed by `tweak`, served on a fresh socket; logs warnings only.
func liveVM(devicePath: String, _ tweak: (inout VMMConfiguration) -> Void) throws -> ServedVMM {
    var c = VMMConfiguration()
    c.vcpus = 2
    c.ramSize = 64 << 20
    c.devicePath = devicePath
    c.allowMutations = true
    tweak(&c)
    var logger = Logger(label: "vmscope.bench")
    logger.logLevel = .warning
    return try ServedVMM(c, logger: logger)
}

/// The VMM and the path between it and the inspector, on a running VM: per-fault recording cost, end-to-end
/// latency at ~1,000 faults/s and at the highest rate the guest reaches, a 2 MiB conversion round trip, and
/// QEMU's `query-status` round trip as the baseline (when QEMU is installed).
public func liveBenchmarks(_ sizes: BenchSizes, devicePath: String = "/dev/kvm") throws -> [BenchResult] {
    guard FileManager.default.fileExists(atPath: devicePath) else {
        return [BenchResult(name: "e2e-latency-ms-1k", value: .nan, unit: "ms", note: "skipped: \(devicePath) does not exist")]
    }
    let seconds = sizes.repetitions > 10 ? 5.0 : 1.0
    var results: [BenchResult] = []

    // Latency: record time (the vCPU thread's CLOCK_MONOTONIC at the exit) → the record in the model.
    func stream(wrongViewEvery: Int, vcpus: Int, pages: Int) throws -> (rate: Double, medianMs: Double, p99Ms: Double, emit: [UInt64]) {
        let vm = try liveVM(devicePath: devicePath) { c in
            c.vcpus = vcpus
            c.faultPolicy = .report  // record and complete: the fault path without a conversion
            c.guest.wrongViewEvery = wrongViewEvery
            c.guest.convertEvery = 0
            c.guest.workingSetPages = pages
        }
        defer { vm.stop() }
        let client = try ControlClient(path: vm.path, decodeFaults: true)
        defer { client.close() }
        var model = InspectorModel()
        var latencies: [Double] = []
        let start = nowNs()
        var first: UInt64?
        while Double(nowNs() - start) < seconds * 1e9 {
            guard let e = client.nextItem(timeoutMs: 100) else { continue }
            guard case .faults(let batch) = e else { continue }
            let now = nowNs()
            model.apply(faults: batch, nowNs: now)
            for r in batch.records {
                if first == nil { first = r.timeNs }
                latencies.append(Double(now &- r.timeNs) / 1e6)
            }
        }
        let span = Double(nowNs() - (first ?? start)) / 1e9
        let sorted = latencies.sorted()
        return (Double(latencies.count) / max(span, 1e-9), sorted.isEmpty ? .nan : median(sorted),
                sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, sorted.count * 99 / 100)], vm.vmm.recentFaultEmitCosts())
    }
    // The guest's fault rate scales with 1/wrongViewEvery: calibrate at 1, then aim at 1,000/s.
    let fastest = try stream(wrongViewEvery: 1, vcpus: 2, pages: 16)
    let every = max(1, Int((fastest.rate / 1000).rounded()))
    let paced = try stream(wrongViewEvery: every, vcpus: 2, pages: 16)
    let emit = (fastest.emit + paced.emit).map { Double($0) }
    results.append(BenchResult(name: "vmm-fault-emit-ns", value: emit.isEmpty ? .nan : median(emit), unit: "ns", target: .atMost(5000),
                               note: "vCPU thread, exit handler start → record in the ring, conversion excluded; \(emit.count) faults"))
    results.append(BenchResult(name: "e2e-latency-ms-1k", value: paced.medianMs, unit: "ms", target: .atMost(20),
                               note: String(format: "guest at %.0f faults/s (a wrong-view touch every %d passes, 2 vCPUs); p99 %.1f ms; vCPU exit → inspector model", paced.rate, every, paced.p99Ms)))
    results.append(BenchResult(name: "e2e-latency-ms-max-rate", value: fastest.medianMs, unit: "ms", target: .atMost(100),
                               note: String(format: "guest at %.0f faults/s, its highest (a wrong-view touch every pass); p99 %.1f ms", fastest.rate, fastest.p99Ms)))

    // Round trips: QEMU's query-status as the baseline, then a 2 MiB conversion through the control socket.
    let qemu = qemuStatusRoundTrip(repetitions: sizes.repetitions)
    let baseline = qemu.map {
        BenchResult(name: "qemu-status-rtt-ms", value: $0.ms, unit: "ms", note: "baseline: \($0.what)")
    }
    if let baseline { results.append(baseline) } else {
        results.append(BenchResult(name: "qemu-status-rtt-ms", value: .nan, unit: "ms", note: "skipped: qemu-system-x86_64 is not installed"))
    }
    let vm = try liveVM(devicePath: devicePath) { _ in }
    defer { vm.stop() }
    let client = try ControlClient(path: vm.path)
    defer { client.close() }
    var rtt: [Double] = []
    for i in 0..<sizes.repetitions * 2 {
        let t = nowNs()
        // A refused conversion would time as a fast one: any error ends the benchmark instead.
        try client.run(SetMemoryAttributes(gpa: 32 << 20, size: 2 << 20, toPrivate: i % 2 == 1))
        rtt.append(Double(nowNs() - t) / 1e6)
    }
    results.append(BenchResult(name: "convert-rtt-ms", value: median(rtt), unit: "ms", target: .atMost(5), baseline: baseline,
                               note: "set-memory-attributes 2 MiB to shared and back over the control socket (what `vmscope ctl` sends), 64 MiB VM, guest running"))
    var status: [Double] = []
    for _ in 0..<sizes.repetitions {
        let t = nowNs()
        try client.run(QueryVM())
        status.append(Double(nowNs() - t) / 1e6)
    }
    results.append(BenchResult(name: "vmscope-query-vm-rtt-ms", value: median(status), unit: "ms", baseline: baseline,
                               note: "query-vm over the same socket: the protocol's own round trip"))
    return results
}

/// The round-trip benchmarks' peer: a QEMU started for the purpose (paused, no devices) and a client of its QMP
/// socket, whose `query-status` is the baseline of a control-socket round trip.
struct QEMUStatusPeer {
    let qemu: QEMUInstance
    let client: ControlClient
    /// nil without QEMU, or when it did not start or answer.
    init?() {
        guard QEMUInstance.binary != nil,
              let qemu = try? QEMUInstance(arguments: ["-machine", "pc", "-m", "64", "-nodefaults", "-S"]) else { return nil }
        guard let client = try? ControlClient(path: qemu.qmpSockets[0]) else { qemu.stop(); return nil }
        self.qemu = qemu
        self.client = client
    }
    /// One `query-status` round trip, in ms.
    func roundTrip() throws -> Double {
        let t = nowNs()
        _ = try client.execute(QEMUQMP.Command.queryStatus.rawValue)
        return Double(nowNs() - t) / 1e6
    }
    var version: String { if case .qemu(let v, _) = client.peer { v } else { "?" } }
    /// What the baseline is, for a result's note.
    var what: String {
        "QEMU \(version) (-accel \(qemu.accelerator)\(qemu.fallbackReason.map { " (\($0))" } ?? "")) query-status over its QMP socket, same client code"
    }
    func stop() {
        client.close()
        qemu.stop()
    }
}

/// Median `query-status` round trip to a `QEMUStatusPeer`, or nil without QEMU.
func qemuStatusRoundTrip(repetitions: Int) -> (ms: Double, what: String)? {
    guard let peer = QEMUStatusPeer() else { return nil }
    defer { peer.stop() }
    var times: [Double] = []
    for _ in 0..<repetitions {
        guard let ms = try? peer.roundTrip() else { break }
        times.append(ms)
    }
    return times.isEmpty ? nil : (median(times), peer.what)
}
