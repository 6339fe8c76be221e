import Foundation
import HostTracing
import ProcessSupport
import Testing
@testable import Benchmarks
import VMM

/// The benchmarks at tiny sizes, so they cannot rot; figures come from `swift run -c release vmscope-bench`.
struct SmokeTests {
    @Test func bitmapBaselineFindsTheSameRunsAsTheMap() {
        var map = alternatingMap(bytes: 64 << 20, runs: 37)
        map.set(pages: 100..<101, private: false)
        map.set(pages: 16383..<16384, private: false)
        #expect(PageBitmap(map).runs() == map.allRuns)
        #expect(map.runCount == 40)
        let walked = summary(map)
        #expect(walked.runs == 40)
        #expect(PageBitmap(map).summary() == walked)
        #expect(walked.privatePages == map.pageCounts(pages: 0..<map.pageCount).private)
    }

    @Test func attributeMapBenchmarksReportEveryFigure() throws {
        let results = attributeMapBenchmarks(.smoke)
        let names = Set(results.map(\.name))
        for name in ["attr-query-1tib-1m-runs-us", "attr-bytes-per-run", "bitmap-query-full-range-us",
                     "attr-query-1gib-window-us", "attr-lookup-ns"] {
            #expect(names.contains(name), "missing \(name)")
        }
        for r in results { #expect(r.value.isFinite && r.value > 0, "\(r.name) = \(r.value)") }
        let query = try #require(results.first { $0.name == "attr-query-1tib-1m-runs-us" })
        #expect(query.baseline == "bitmap-query-full-range-us" && query.ratio != nil && query.met != nil)
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm"), "/dev/kvm does not exist on this machine"))
    func conversionBenchmarksRunOnRealKVM() throws {
        let results = try conversionBenchmarks(.smoke)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let convert = try #require(byName["vmm-convert-ms-16k-runs"])
        #expect(convert.value > 0 && convert.value.isFinite)
        #expect(convert.note?.contains("\(BenchSizes.smoke.vmRuns + 1) runs") == true, "\(convert.note ?? "")")
        #expect(byName["vmm-convert-ms-small-vm"].map { $0.value > 0 } == true)
        #expect(byName["vmm-rss-mib-16k-runs"].map { $0.value > 0 } == true)
    }

    @Test func inspectorBenchmarksReportEveryFigure() throws {
        let results = inspectorBenchmarks(.smoke)
        let names = Set(results.map(\.name))
        for name in ["fault-decode-records-per-s", "fault-decode-tree-records-per-s", "foundation-jsondecoder-records-per-s", "framer-1mib-one-line-ms", "framer-1mib-4k-lines-ms", "map-frame-ms", "render-frame-ms"] { #expect(names.contains(name), "missing \(name)") }
        for r in results { #expect(r.value.isFinite && r.value > 0, "\(r.name) = \(r.value)") }
        // The decode path really decodes: every record reaches the model, in order.
        let model = decodeIntoModel(faultEventBytes(batches: 3, perBatch: 100), chunk: 777)
        #expect(model.faultsReceived == 300)
        #expect(model.visibleFaults.map(\.seq) == Array(1...300))
        #expect(model.visibleFaults.last?.access == "write" || model.visibleFaults.last?.access == "read")
    }

    /// Key → frame under each policy (the figures are the release benchmark's; here: each policy measured, keys
    /// answered, faults flowing).
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm"), "/dev/kvm does not exist on this machine"))
    func keyLatencyIsMeasuredUnderEachPolicy() throws {
        let results = try keyLatencyBenchmarks(.smoke)
        #expect(results.map(\.name) == ["key-to-frame-p99-ms-idle", "key-to-frame-p99-ms-convert", "key-to-frame-p99-ms-pause", "key-to-frame-p99-ms-report"])
        for r in results.dropFirst() {
            #expect(r.baseline == "key-to-frame-p99-ms-idle")
            #expect(r.value.isFinite && r.value > 0, "\(r.name) = \(r.value)")
            #expect(r.note?.contains("40 keys") == true && r.note?.contains(" 0 faults/s") == false, "\(r.note ?? "")")
        }
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm"), "/dev/kvm does not exist on this machine"))
    func liveBenchmarksMeasureARunningVM() throws {
        let results = try liveBenchmarks(.smoke)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in ["vmm-fault-emit-ns", "e2e-latency-ms-1k", "e2e-latency-ms-max-rate", "convert-rtt-ms", "vmscope-query-vm-rtt-ms"] {
            let r = try #require(byName[name], "missing \(name)")
            #expect(r.value.isFinite && r.value > 0, "\(name) = \(r.value)")
        }
        // Faults really flowed: the paced run names the rate it reached.
        #expect(byName["e2e-latency-ms-1k"]?.note?.contains(" 0 faults/s") == false, "\(byName["e2e-latency-ms-1k"]?.note ?? "")")
        let qemu = try #require(byName["qemu-status-rtt-ms"])
        if QEMUInstance.binary != nil {
            #expect(qemu.value.isFinite && qemu.value > 0, "\(qemu.note ?? "")")
            #expect(byName["convert-rtt-ms"]?.baseline == "qemu-status-rtt-ms")
        } else {
            print("qemu-status-rtt-ms skipped: qemu-system-x86_64 is not installed")
        }
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm"), "/dev/kvm does not exist on this machine"))
    func inspectorCPUBenchmarksDriveTheRealBinary() throws {
        let vmscope = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("vmscope").path
        try #require(FileManager.default.isExecutableFile(atPath: vmscope), "\(vmscope) was not built")
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let results = try inspectorCPUBenchmarks(.smoke, vmscope: vmscope)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in ["idle-cpu-pct", "stream-cpu-pct", "stream-dropped-records", "stream-rss-growth-mib"] {
            let r = try #require(byName[name], "missing \(name)")
            #expect(r.value.isFinite, "\(name) = \(r.value)")
        }
        // The stream costs the inspector more than idling does, and the feeder reached its rate.
        #expect(byName["stream-cpu-pct"]!.value > byName["idle-cpu-pct"]!.value)
        #expect(byName["stream-cpu-pct"]?.note?.contains("under 0 fault") == false)
    }

    @Test(.enabled(if: QEMUInstance.binary != nil, "qemu-system-x86_64 is not installed (.ci/run installs qemu-system-x86)"))
    func qemuPollingBenchmarkAttachesTheRealBinary() throws {
        let vmscope = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("vmscope").path
        try #require(FileManager.default.isExecutableFile(atPath: vmscope), "\(vmscope) was not built")
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let results = try qemuPollingBenchmarks(.smoke, vmscope: vmscope)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in ["qemu-alone-cpu-pct-paused", "qemu-attached-cpu-pct-paused", "qemu-poll-added-cpu-pct-paused"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite, "\(name) = \(r.value) \(r.note ?? "")")
        }
        #expect(byName["qemu-attached-cpu-pct-paused"]?.baseline == "qemu-alone-cpu-pct-paused")
    }

    /// With a libvirtd answering (the libvirt tests start one; `.ci/run` installs it), the libvirt polling benchmark
    /// attaches the real binary through libvirt; without one it says why it skipped.
    @Test func libvirtPollingBenchmarkAttachesThroughLibvirtOrSaysWhyNot() throws {
        let vmscope = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("vmscope").path
        let results = try libvirtPollingBenchmarks(.smoke, vmscope: vmscope)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        if let only = results.first, results.count == 1 {
            #expect(only.name == "libvirt-poll-added-cpu-pct-qemu" && only.value.isNaN && only.note?.hasPrefix("skipped: ") == true, "\(only)")
            print("SmokeTests: libvirt polling not measured: \(only.note ?? "")")
            return
        }
        for name in ["libvirt-qemu-alone-cpu-pct", "libvirt-qemu-attached-cpu-pct", "libvirt-poll-added-cpu-pct-qemu",
                     "libvirt-libvirtd-alone-cpu-pct", "libvirt-libvirtd-attached-cpu-pct", "libvirt-poll-added-cpu-pct-libvirtd"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite, "\(name) = \(r.value) \(r.note ?? "")")
        }
        #expect(byName["libvirt-libvirtd-attached-cpu-pct"]?.note?.contains("polled every") == true)
    }

    /// The protocol's round trips against QEMU's query-status (issue 32), quiet and with every core busy: each figure
    /// has QEMU's under the same load as its baseline, and the conversion's p99 says what the VMM's own part was.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
    func protocolRoundTripsAreMeasuredAgainstQEMUQuietAndLoaded() throws {
        let results = try protocolRoundTripBenchmarks(.smoke)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        if results.count == 1, let only = results.first {
            #expect(only.value.isNaN && only.note?.hasPrefix("skipped: ") == true, "\(only)")
            return
        }
        for tag in ["quiet", "loaded"] {
            for what in ["query-vm", "query-memory-faults", "convert"] {
                let r = try #require(byName["rtt-\(what)-\(tag)-ms"], "\(results)")
                #expect(r.value.isFinite && r.value > 0 && r.baseline == "rtt-qemu-status-\(tag)-ms", "\(r)")
            }
            let p99 = try #require(byName["rtt-convert-\(tag)-p99-ms"])
            #expect(p99.value >= byName["rtt-convert-\(tag)-ms"]!.value && p99.note?.contains("duration-ns") == true, "\(p99)")
        }
        #expect(byName["rtt-convert-loaded-p99-ms"]?.target != nil && byName["rtt-qemu-status-loaded-ms"]?.note?.contains("shell loops") == true)
    }

    /// The tracing-cost group (issue 29) runs inside the lab: every figure is there and finite, and both tracers
    /// decoded events of the VMM's guest; or the one result says why it was skipped.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
    func tracingCostRunsInTheLabOrSaysWhyNot() throws {
        let dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let results = try labTracingCostBenchmarks(.smoke, vmscope: dir.appendingPathComponent("vmscope").path,
                                                   bench: dir.appendingPathComponent("vmscope-bench").path)
        if results.count == 1, let skipped = results.first, skipped.value.isNaN {
            #expect(skipped.name == "lab-trace-paired-progress" && skipped.note?.hasPrefix("skipped: ") == true, "\(skipped)")
            print("SmokeTests: tracing cost not measured: \(skipped.note ?? "")")
            return
        }
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in ["lab-trace-untraced-beats-per-s", "lab-trace-paired-progress", "lab-trace-paired-vmscope-pairing-progress",
                     "lab-trace-paired-kernel-only-progress", "lab-trace-paired-cpu-share", "lab-trace-every-event-progress", "lab-trace-every-event-cpu-share"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite && r.value > 0 && r.note?.hasPrefix("in the lab (Linux ") == true, "\(name) = \(r.value) \(r.note ?? "")")
        }
        for name in ["lab-trace-paired-progress", "lab-trace-paired-vmscope-pairing-progress", "lab-trace-paired-kernel-only-progress", "lab-trace-every-event-progress"] {
            let note = byName[name]?.note ?? ""
            #expect(note.contains("events decoded") && !note.contains("; 0 events decoded"), "\(name): \(note)")
        }
        // The lab's 7.3 has histogram triggers: the paired tracer's events are paired in the kernel, its baseline's not.
        #expect(byName["lab-trace-paired-progress"]?.note?.contains("paired in the kernel") == true, "\(byName["lab-trace-paired-progress"]?.note ?? "")")
        #expect(byName["lab-trace-paired-progress"]?.baseline == "lab-trace-paired-vmscope-pairing-progress")
    }

    /// The peers group against kvm_stat (issue 32): here, under PVM, kvm_stat does not start and the group runs inside
    /// the lab; either way every figure comes with its baseline, or the one result says why it was skipped.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
    func peersBenchmarkComparesTopWithKvmStatOrSaysWhyNot() throws {
        let dir = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let results = try peersBenchmarks(.smoke, vmscope: dir.appendingPathComponent("vmscope").path,
                                          bench: dir.appendingPathComponent("vmscope-bench").path)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        if let skipped = results.last, skipped.name == "peers-top-once-cpu-ms", skipped.value.isNaN {
            #expect(skipped.note?.hasPrefix("skipped: ") == true, "\(skipped)")
            print("SmokeTests: peers not measured: \(skipped.note ?? "")")
            return
        }
        for (name, baseline) in [("peers-top-once-cpu-ms", "peers-kvm-stat-once-cpu-ms"), ("peers-top-once-wall-ms", "peers-kvm-stat-once-wall-ms"),
                                 ("peers-top-1s-cpu-ms-per-s", "peers-kvm-stat-log-cpu-ms-per-s")] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite && r.value > 0 && r.baseline == baseline, "\(name) = \(r.value) \(r.note ?? "")")
            #expect(byName[baseline].map { $0.value.isFinite && $0.value > 0 } == true, "\(baseline): \(results)")
        }
        if let here = byName["peers-kvm-stat-starts-here"] {
            #expect(here.note?.contains("does not start on this host") == true && byName["peers-top-once-cpu-ms"]?.note?.hasPrefix("in the lab") == true)
        }
        // vmscope trace against trace-cmd record on the same VMM (where trace-cmd is installed: .ci/run installs it).
        if let skipped = byName["peers-trace-progress-vs-trace-cmd"] {
            #expect(skipped.note?.contains("skipped: trace-cmd is not installed") == true, "\(skipped)")
            print("SmokeTests: vmscope trace not measured against trace-cmd: \(skipped.note ?? "")")
            return
        }
        for (name, baseline) in [("peers-trace-cmd-beats-per-s", "peers-trace-untraced-beats-per-s"),
                                 ("peers-trace-vmscope-beats-per-s", "peers-trace-cmd-beats-per-s"),
                                 ("peers-trace-vmscope-cpu-ms-per-s", "peers-trace-cmd-cpu-ms-per-s"),
                                 ("peers-trace-vmscope-progress", "peers-trace-cmd-progress")] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite && r.value > 0 && r.baseline == baseline, "\(name) = \(r.value) \(r.note ?? "")")
        }
        #expect(byName["peers-trace-vmscope-beats-per-s"]?.note?.contains("events decoded") == true)
        // The guest's pace under each tracer is judged against the untraced windows either side of each window (a
        // fraction of them, not beats a second), and that comparison carries the target.
        for name in ["peers-trace-cmd-progress", "peers-trace-vmscope-progress"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.unit == "of untraced" && r.value > 0.2 && r.value < 5, "\(name) = \(r.value) \(r.note ?? "")")
        }
        #expect(byName["peers-trace-vmscope-progress"]?.met != nil && byName["peers-trace-vmscope-beats-per-s"]?.met == nil)
        // trace-cmd traced the VMM's threads (with -P for the process alone it records nothing of its vCPUs).
        let recorded = byName["peers-trace-cmd-beats-per-s"]?.note ?? ""
        #expect(recorded.contains("bytes of events recorded") && !recorded.contains("; 0 bytes of events"), "\(recorded)")
        // The drop-free sweep: the generator ran alone and under each tracer; at its slowest step (1,000 exits/s, far
        // below what either reads) both had every exit, so each has a drop-free rate; the deciding row is judged.
        #expect((byName["peers-trace-sweep-untraced-exits-per-s"]?.value ?? 0) > 500, "\(results.filter { $0.name.contains("sweep") })")
        for name in ["peers-trace-cmd-drop-free-events-per-s", "peers-trace-drop-free-events-per-s"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value >= 1_000 && r.note?.contains("1000 → ") == true, "\(name) = \(r.value) \(r.note ?? "")")
        }
        #expect(byName["peers-trace-drop-free-events-per-s"]?.baseline == "peers-trace-cmd-drop-free-events-per-s")
        #expect(byName["peers-trace-steps-lost-by-vmscope-only"]?.met != nil)
    }

    @Test(.enabled(if: FileManager.default.fileExists(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
    func exporterBenchmarkScrapesTheRealBinary() throws {
        let vmscope = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("vmscope").path
        let results = try exporterBenchmarks(.smoke, vmscope: vmscope)
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in ["exporter-cpu-percent", "exporter-scrape-median-ms", "exporter-scrape-max-ms", "exporter-watched-vmm-cpu-percent"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite && r.value > 0, "\(name) = \(r.value) \(r.note ?? "")")
        }
        #expect(byName["exporter-cpu-percent"]?.baseline == "exporter-watched-vmm-cpu-percent")
        #expect(byName["exporter-scrape-median-ms"]?.note?.contains(" 0 bytes") == false)
    }

    @Test func traceDecodeAndPairingBenchmarksRunOnTheRecordings() throws {
        // No device: only the recorded-buffer figures (the heartbeat overhead needs a VM).
        let results = try traceBenchmarks(.smoke, devicePath: "/nonexistent")
        let byName = Dictionary(results.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for name in ["trace-decode-events-per-s", "trace-pairing-events-per-s"] {
            let r = try #require(byName[name], "missing \(name): \(results)")
            #expect(r.value.isFinite && r.value > 0, "\(name) = \(r.value) \(r.note ?? "")")
        }
        // The pairing really pairs: every conversion of the 7.3 recording, and its memory faults (and with them the
        // conversions' steps and the guest's requests, which the benchmark counts too).
        let buffer = try RecordedTraceBuffer(records: 998, path: conversionsRecordingPath)
        var pairing = TracePairing(tracesConversions: true, complete: true)
        var paired: [TracePairing.Paired] = []
        buffer.forEachEvent { pairing.apply($0, into: &paired) }
        #expect(paired.filter { if case .conversion = $0 { true } else { false } }.count == 298)
        #expect(paired.filter { if case .fault = $0 { true } else { false } }.count == 52)
        #expect(pairRecordedBuffer(buffer) == paired.count)
    }

    @Test func reportEncodesTheIssueShape() throws {
        let report = BenchReport(machine: .current(), results: [
            BenchResult(name: "b", value: 2, unit: "ms"),
            BenchResult(name: "a", value: 1, unit: "ms", target: .atMost(1.5), baseline: BenchResult(name: "b", value: 2, unit: "ms")),
        ])
        let object = try JSONSerialization.jsonObject(with: Data(report.json().utf8)) as? [String: Any]
        let results = try #require(object?["results"] as? [[String: Any]])
        #expect(object?["machine"] is [String: Any])
        #expect(results.count == 2)
        #expect(results[1]["ratio"] as? Double == 0.5)
        #expect(results[1]["met"] as? Bool == true)
        #expect(report.markdown(command: "x").contains("| a | 1 | ms | <= 1.5 | yes | b | 0.5× |"))
    }
}
