@testable import Schema
import ControlProtocol
import HostTracing
import Inspector
import ProcessSupport
import Foundation
import Synchronization
import Testing
import TestSupport

let traceAvailable: Bool = {
    guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/kvm") else {
        print("TraceCLITests: skipped: needs root and /dev/kvm")
        return false
    }
    if let why = tracingLibrariesMissing {
        print("TraceCLITests: skipped: \(why)")
        return false
    }
    // A tracefs vmscope can neither write nor mount a writable one beside (a container without mount rights).
    do { _ = try TraceSession.tracingDirectory() } catch {
        print("TraceCLITests: skipped: \(error)")
        return false
    }
    return true
}()

/// `vmscope trace` and `vmscope top` against real VMs on this machine (root and tracefs; skipped with the reason
/// where either is missing).
@Suite(.serialized, .enabled(if: traceAvailable, "tracing needs root, /dev/kvm, libtracefs1 and libtraceevent1, and a writable tracefs"))
struct TraceCLITests {
    /// The vmscope process a pane's shell runs, found from the pane's own pid (not by name: another test run's
    /// vmscope, on this machine at the same time, is never taken for it).
    static func vmscopePid(in t: TmuxPane) -> String {
        guard let shell = t.pid else { return "?" }
        return descendants(of: shell).first { $0.command == "vmscope" }.map { String($0.pid) } ?? "?"
    }

    /// Where vmscope traces on this machine (the suite runs only where there is one).
    static let tracefs = (try? TraceSession.tracingDirectory()) ?? TraceSession.standardTracingDirectory

    static func instances() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: tracefs + "/instances")) ?? []).filter { $0.hasPrefix("vmscope-") }
    }

    /// Every vmm/MMIO fault record the VMM reports has a kvm_mmio event at the same GPA from one of its own vCPU
    /// threads; the other VM's threads never appear; the instance is gone afterwards.
    @Test func traceSeesTheVMMsMMIOFaultsAndNothingOfAnotherVM() throws {
        let vmm = try RunningVMM(["--vcpus", "2"]), other = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop(); other.stop() }
        let pid = vmm.process.processIdentifier, otherPid = other.process.processIdentifier
        let raw = NSTemporaryDirectory() + "vmscope-raw-\(getpid()).jsonl"
        defer { unlink(raw) }
        let trace = try ChildOutput([Binary.url.path, "trace", String(pid), "--json", "--duration", "6s", "--events", "kvm_mmio,kvm_userspace_exit",
                                     "--save-raw", raw])
        usleep(1_500_000)
        // A conversion burst: the guest's wrong-view touches become vmm/MMIO records while tracing runs.
        let client = try ControlClient(path: vmm.socket)
        defer { client.close() }
        let before = try client.run(QueryMemoryFaults(limit: 0)).total
        let result = trace.wait(seconds: 30)
        #expect(result.status == 0, "\(result.stderr)")
        let after = try client.run(QueryMemoryFaults(limit: 4096))
        let records = after.records.filter { $0.seq > before && $0.source == .vmm && $0.exit == .mmio }
        #expect(!records.isEmpty, "the guest made wrong-view touches while tracing ran")
        let events = result.stdout.split(separator: "\n").compactMap { try? JSON.parse(String($0)) }
        #expect(!events.isEmpty, "\(result.stderr)")
        // Paced: a light stream is read at most every 500 ms with the default buffer (TracePacer.traceLongestNs), not
        // again at once whenever a read found something (which, in the lab, took half the guest's progress), nor every
        // 100 ms (each read's fixed part cost the lab guest's CPUs a third more). 6 s: about 12 reads and a final one (up to 30: a burst makes reads come sooner; at 100 ms it was about 60).
        let reads = result.stderr.split(separator: "\n").last { $0.contains(" reads") }.flatMap { $0.split(separator: " ").dropLast().last }.flatMap { Int($0) }
        #expect(reads != nil && reads! <= 30, "\(result.stderr)")
        let vmmThreads = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { Int($0) })
        let otherThreads = Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(otherPid)/task")) ?? []).compactMap { Int($0) })
        let tids = Set(events.compactMap { $0["tid"]?.intValue })
        #expect(tids.isSubset(of: vmmThreads), "every event from the traced VMM's threads: \(tids.subtracting(vmmThreads))")
        #expect(tids.isDisjoint(with: otherThreads), "nothing from the other VM")
        let mmio = Set(events.filter { $0["event"]?.stringValue == "kvm_mmio" }.compactMap { $0["gpa"]?.uint64Value.map { $0 & ~0xFFF } })
        // Records from the traced window: their page was touched through MMIO (the record's gpa is the page).
        let window = records.filter { r in mmio.contains(r.gpa) }
        #expect(window.count * 2 >= records.count, "\(window.count) of \(records.count) records have a kvm_mmio at their page")
        #expect(!Self.instances().contains("vmscope-\(trace.pid)"), "the tracefs instance is removed: \(Self.instances())")
        // The raw records saved beside decode, later and without tracing, to exactly what was printed live.
        let loaded = try Binary.run(["trace", "--load-raw", raw, "--json"])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(loaded.stdout == result.stdout, "--load-raw of the --save-raw file prints what the live trace printed")
        let damaged = raw + ".bad"
        defer { unlink(damaged) }
        try Data("{\"format\":\"vmscope-raw-trace\",\"version\":9}\n".utf8).write(to: URL(fileURLWithPath: damaged))
        let refused = try Binary.run(["trace", "--load-raw", damaged])
        #expect(refused.status == 2 && refused.stderr.contains("format version 9") && refused.stdout.isEmpty, "\(refused.stderr)")
        let both = try Binary.run(["trace", String(pid), "--load-raw", raw])
        #expect(both.status != 0 && both.stderr.contains("takes no process id"), "\(both.stderr)")
    }

    /// A tracer keeps the memory it frees for its next read: a read's arrays (hundreds of KiB) came as fresh pages from
    /// the kernel every read and went back when freed, each page faulted in and zeroed again (in the lab, up to 8,000
    /// faults in 20 s and a third more system time). Here: 8,000 exits a second of the benchmarks' exit generator
    /// asked for, traced paired for 12 s; the tracer's page faults over 7 s of its steady state. With glibc's defaults
    /// (this build without `keepFreedMemoryForReuse`): 1,388 on this host.
    @Test func aTracerFaultsInNoFreshPagesOnceRunning() throws {
        let bench = Binary.url.deletingLastPathComponent().appendingPathComponent("vmscope-bench").path
        try #require(FileManager.default.isExecutableFile(atPath: bench), "\(bench): built with the tests")
        let gate = NSTemporaryDirectory() + "vmscope-gate-\(getpid())"
        unlink(gate)
        defer { unlink(gate) }
        let generator = try ChildOutput([bench, "--generate-exits", "8000", "--gate", gate, "--seconds", "16"])
        var ready = false
        for _ in 0..<200 where !ready {
            ready = ((try? String(contentsOfFile: generator.stderrPath, encoding: .utf8)) ?? "").contains("exit generator ready")
            if !ready { usleep(50_000) }
        }
        try #require(ready, "the exit generator did not start")
        let pid = generator.child.pid
        FileManager.default.createFile(atPath: gate, contents: nil)
        let trace = try ChildOutput([Binary.url.path, "trace", String(pid), "--paired-only", "--json", "--duration", "12s"])
        func faults() -> Int? { procStatFields(pid: trace.child.pid).flatMap { $0.count > 7 ? Int($0[7]) : nil } }
        usleep(4_000_000)
        let before = faults()
        usleep(7_000_000)
        let after = faults()
        let result = trace.wait(seconds: 30)
        _ = generator.wait(seconds: 30)
        #expect(result.status == 0, "\(result.stderr)")
        let decoded = result.stderr.split(separator: "\n").last { $0.contains("events decoded") }.map(String.init) ?? result.stderr
        let grew = try #require(after.flatMap { a in before.map { a - $0 } }, "the tracer's /proc stat")
        #expect(grew <= 100, "the tracer took \(grew) page faults in 7 s of its steady state; \(decoded)")
    }

    /// --buffer-kib sizes each CPU's buffer in the trace's own instance (trace-cmd's -b): the instance says so while
    /// the trace runs, and a tracer held up (SIGSTOP) until the kernel overwrote part of a small buffer says what the
    /// kernel dropped, where the default buffer, held up as long on the same VM, drops nothing.
    @Test func bufferKiBSizesTheInstanceAndASmallOneCountsWhatItLost() throws {
        let vmm = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop() }
        let pid = vmm.process.processIdentifier
        /// Traced with `extra`, held up for `seconds` (nil: until the kernel says it overran a CPU's buffer, at most 60 s).
        func heldUp(_ extra: [String], seconds: Double?) throws -> (sizeKiB: String, held: Double, decoded: UInt64?, dropped: UInt64?, stderr: String) {
            let t = try ChildOutput([Binary.url.path, "trace", String(pid), "--events", "kvm_userspace_exit,kvm_mmio", "--json"] + extra)
            let up = eventuallyTrue(30) { ((try? String(contentsOfFile: t.stderrPath, encoding: .utf8)) ?? "").contains("tracing process") }
            let instance = "\(Self.tracefs)/instances/vmscope-\(t.pid)"
            let size = (try? String(contentsOfFile: instance + "/buffer_size_kb", encoding: .utf8)) ?? ""
            /// Events the kernel overwrote, every CPU's ("overrun: N" in per_cpu/cpuN/stats).
            func overrun() -> UInt64 {
                ((try? FileManager.default.contentsOfDirectory(atPath: instance + "/per_cpu")) ?? []).reduce(0) { sum, cpu in
                    let stats = (try? String(contentsOfFile: "\(instance)/per_cpu/\(cpu)/stats", encoding: .utf8)) ?? ""
                    return sum + (stats.split(separator: "\n").first { $0.hasPrefix("overrun:") }.flatMap { UInt64($0.dropFirst(8).trimmingCharacters(in: .whitespaces)) } ?? 0)
                }
            }
            let start = Date()
            t.child.signal(SIGSTOP)
            if let seconds { Thread.sleep(forTimeInterval: seconds) } else { _ = eventuallyTrue(60) { overrun() > 0 } }
            let held = Date().timeIntervalSince(start)
            t.child.signal(SIGCONT)
            usleep(500_000)
            t.child.signal(SIGINT)
            let r = t.wait(seconds: 30)
            #expect(up && r.status == 0, "\(r.stderr)")
            // "… N events decoded, M dropped by the kernel's buffer, …"
            let summary = r.stderr.split(separator: "\n").first { $0.contains("dropped by the kernel") } ?? ""
            func number(before word: String) -> UInt64? {
                summary.range(of: " " + word).flatMap { UInt64(summary[..<$0.lowerBound].split(separator: " ").last ?? "") }
            }
            return (size.trimmingCharacters(in: .whitespacesAndNewlines), held, number(before: "events decoded"), number(before: "dropped by"), r.stderr)
        }
        // The kernel gives whole pages and a reader's page more (19 KiB for 16, 4099 for 4096 on 6.18).
        func sized(_ text: String, _ asked: Int) -> Bool { Int(text).map { (asked...asked + 16).contains($0) } ?? false }
        let small = try heldUp(["--buffer-kib", "16"], seconds: nil)
        #expect(sized(small.sizeKiB, 16), "the instance's buffer_size_kb: \(small.sizeKiB)")
        #expect((small.dropped ?? 0) > 0, "held up \(small.held) s with 16 KiB a CPU: \(small.stderr)")
        let large = try heldUp([], seconds: small.held)
        print(String(format: "TraceCLITests: held up %.1f s: 16 KiB a CPU: %llu events, %llu dropped; 4096 KiB: %llu, %llu dropped",
                     small.held, small.decoded ?? 0, small.dropped ?? 0, large.decoded ?? 0, large.dropped ?? 0))
        #expect(sized(large.sizeKiB, 4096), "the default: \(large.sizeKiB)")
        #expect(large.dropped == 0, "held up \(large.held) s with 4 MiB a CPU: \(large.stderr)")
    }

    /// A full disk under --save-raw: the trace stops with the reason (exit 2), and the file decodes up to the record
    /// the disk cut short, which --load-raw names instead of calling the file damaged.
    @Test func aFullDiskStopsSaveRawClearlyAndWhatWasWrittenDecodes() throws {
        let dir = NSTemporaryDirectory() + "vmscope-rawfull-\(getpid())"
        let mnt = dir + "/small"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mounted = try runProcess("/bin/mount", ["-t", "tmpfs", "-o", "size=16k", "tmpfs", mnt])
        try #require(mounted.status == 0, "cannot mount a small tmpfs to fill: \(mounted.stderr)")
        defer { _ = try? runProcess("/bin/umount", [mnt]) }
        let vmm = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop() }
        let file = mnt + "/raw.jsonl"
        let r = try Binary.run(["trace", String(vmm.process.processIdentifier), "--save-raw", file, "--json", "--duration", "60s"])
        #expect(r.status == 2 && r.stderr.contains("No space left on device") && r.stderr.contains("stopped"), "\(r.stderr)")
        let loaded = try Binary.run(["trace", "--load-raw", file, "--json"])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        let decoded = loaded.stdout.split(separator: "\n").count
        #expect(decoded > 50, "the records before the disk filled: \(decoded)")
        #expect(r.stdout.hasPrefix(loaded.stdout), "what decodes is what was printed live, up to the cut")
        if loaded.stderr.contains("ends inside line") {
            #expect(loaded.stderr.contains("cut short"), "\(loaded.stderr)")
        }
    }

    /// A trace killed outright leaves its instance; the next start removes it.
    @Test func aStaleInstanceIsRemovedByTheNextStart() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let pid = vmm.process.processIdentifier
        let first = try ChildOutput([Binary.url.path, "trace", String(pid), "--json"])
        var up = false
        for _ in 0..<200 where !up { up = Self.instances().contains("vmscope-\(first.pid)"); if !up { usleep(50_000) } }
        #expect(up, "the trace's own instance, while it runs")
        first.kill()
        _ = first.wait(seconds: 5)
        #expect(Self.instances().contains("vmscope-\(first.pid)"), "SIGKILL leaves it")
        let second = try Binary.run(["trace", String(pid), "--duration", "0.5s"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(!Self.instances().contains("vmscope-\(first.pid)"), "the next start removed the stale instance")
    }

    /// `--pairing kernel` pairs in the kernel where it has histogram triggers, or refuses to start, saying why (this
    /// project's PVM hosts have none; the lab's 7.3 has them, where `TracedMapChecks` checks the records); `--pairing`
    /// goes with `--paired-only` only; a clean stop leaves no synthetic event of its own behind.
    @Test func pairingInTheKernelIsUsedWhereTheKernelCanAndRefusedClearlyWhereNot() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let pid = String(vmm.process.processIdentifier)
        let kernelCan = FileManager.default.fileExists(atPath: Self.tracefs + "/synthetic_events")
        let r = try Binary.run(["trace", pid, "--paired-only", "--pairing", "kernel", "--duration", "1s"])
        if kernelCan {
            #expect(r.status == 0 && r.stderr.contains("paired in the kernel (hist triggers"), "\(r.stderr)")
            // Its synthetic events (named for its instance, vmscope-PID: vmscope_mf_PID, vmscope_ir_PID) are gone.
            let instance = r.stderr.range(of: "tracefs instance vmscope-").map { String(r.stderr[$0.upperBound...].prefix { $0.isNumber }) } ?? "?"
            let left = (try? String(contentsOfFile: Self.tracefs + "/synthetic_events", encoding: .utf8)) ?? ""
            #expect(!left.contains("vmscope_mf_\(instance)") && !left.contains("vmscope_ir_\(instance)"), "\(left)")
        } else {
            #expect(r.status == 2 && r.stderr.contains("--pairing kernel: the kernel cannot pair here: this kernel has no histogram triggers (CONFIG_HIST_TRIGGERS)"),
                    "\(r.status) \(r.stderr)")
        }
        // Its instance is removed either way: every vmscope instance left is a live process's.
        let orphans = Self.instances().filter { name in Int32(name.dropFirst("vmscope-".count).prefix { $0 != "-" }).map { kill($0, 0) != 0 } ?? true }
        #expect(orphans.isEmpty, "\(orphans)")
        // auto: whichever the kernel can, said on start.
        let auto = try Binary.run(["trace", pid, "--paired-only", "--duration", "0.5s"])
        #expect(auto.status == 0 && auto.stderr.contains(kernelCan ? "paired in the kernel" : "paired by vmscope (the kernel pairs nothing: "), "\(auto.stderr)")
        let misused = try Binary.run(["trace", pid, "--pairing", "vmscope", "--duration", "0.5s"])
        #expect(misused.status != 0 && misused.stderr.contains("--pairing goes with --paired-only"), "\(misused.stderr)")
    }

    /// The same for `top`: killed outright in the middle of its window, it leaves its instance, and the next `top`
    /// removes it.
    @Test func topKilledLeavesAnInstanceTheNextTopRemoves() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let first = try ChildOutput([Binary.url.path, "top", "--once", "--json", "--interval", "30"])
        var mine: [String] = []
        for _ in 0..<200 where mine.isEmpty {
            mine = Self.instances().filter { $0 == "vmscope-\(first.pid)" || $0.hasPrefix("vmscope-\(first.pid)-") }
            if mine.isEmpty { usleep(50_000) }
        }
        #expect(!mine.isEmpty, "top's own instance while it samples: \(Self.instances())")
        first.kill()
        _ = first.wait(seconds: 5)
        #expect(Self.instances().contains { mine.contains($0) }, "SIGKILL leaves it: \(Self.instances())")
        let second = try Binary.run(["top", "--once", "--json", "--interval", "0.2"])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(!Self.instances().contains { mine.contains($0) }, "the next top removed the stale instance: \(Self.instances())")
    }

    /// `top --once --json` lists vmscope's VMMs and a stock QEMU side by side, with their pids and vCPU counts, and
    /// their exit counters grow between two calls.
    @Test func topListsEveryVMWithItsPidAndVCPUs() throws {
        let a = try RunningVMM(["--vcpus", "2"]), b = try RunningVMM(["--vcpus", "3"])
        defer { a.stop(); b.stop() }
        let qemu: QEMUInstance? = qemuAvailable ? try startQEMU(qemuConfigurations[0].arguments, monitors: 1) : nil
        defer { qemu?.stop() }
        if qemu == nil { print("topListsEveryVMWithItsPidAndVCPUs: no QEMU installed; vmscope's VMMs only") }
        usleep(1_000_000)
        func vms() throws -> [JSON] {
            let r = try Binary.run(["top", "--once", "--json", "--interval", "0.5"])
            #expect(r.status == 0, "\(r.stderr)")
            return try JSON.parse(r.stdout)["vms"]?.arrayValue ?? []
        }
        // The table marks its sort column, and a row without KVM's counters (a QEMU that opened no statistics,
        // debugfs unreadable) has its `-` explained below it.
        let table = try Binary.run(["top", "--once", "--interval", "0.2"])
        #expect(table.stdout.hasPrefix(TopView.header(sortedBy: .exits)), "\(table.stdout)")
        // The EXITS/s column ends where its header does.
        let end = TopView.columns.distance(from: TopView.columns.startIndex, to: TopView.columns.range(of: "EXITS/s")!.upperBound)
        let dashed = table.stdout.split(separator: "\n").dropFirst().filter { !$0.hasPrefix("- ") && $0.count >= end && Array($0)[end - 1] == "-" }
        if qemu != nil { print("top --once beside a QEMU:\n\(table.stdout)") }
        #expect(dashed.isEmpty || table.stdout.contains("\n- : pid "), "a dash without its reason:\n\(table.stdout)")
        let first = try vms()
        // QEMU's guest (SeaBIOS without a boot device) goes quiet after a second: resets every 100 ms keep it running
        // while the second sample is taken (one reset before top started could finish before its window opened).
        let resetting = try qemu.map { try ControlClient(path: $0.qmpSockets[0]) }
        let stop = Atomic<Bool>(false)
        let resetter = resetting.map { c in
            Thread {
                while !stop.load(ordering: .relaxed) { _ = try? c.execute("system_reset"); usleep(100_000) }
            }
        }
        resetter?.start()
        let second = try vms()
        stop.store(true, ordering: .relaxed)
        usleep(200_000)
        resetting?.close()
        for (vmm, vcpus) in [(a, 2), (b, 3)] {
            let pid = Int(vmm.process.processIdentifier)
            let row1 = first.first { $0["pid"]?.intValue == pid }, row2 = second.first { $0["pid"]?.intValue == pid }
            #expect(row1?["vcpus"]?.intValue == vcpus, "\(String(describing: row1))")
            let e1 = row1?["counters"]?["exits"]?.uint64Value ?? 0, e2 = row2?["counters"]?["exits"]?.uint64Value ?? 0
            #expect(e2 > e1, "exits grow: \(e1) → \(e2)")
            #expect(row1?["name"]?.stringValue == "vmscope", "the VMM's command")
        }
        if let qemu, qemu.accelerator == "kvm" {
            let pid = Int(qemu.process.pid)
            let row1 = first.first { $0["pid"]?.intValue == pid }, row2 = second.first { $0["pid"]?.intValue == pid }
            #expect(row1?["vcpus"]?.intValue == qemuConfigurations[0].vcpus, "QEMU's row: \(String(describing: row1))")
            if let e1 = row1?["counters"]?["exits"]?.uint64Value, let e2 = row2?["counters"]?["exits"]?.uint64Value {
                #expect(e2 > e1, "QEMU's exits grow: \(e1) → \(e2)")
            } else {
                // QEMU 7.2 holds no vCPU statistics file and lockdown closes debugfs here: its exits to userspace,
                // counted from tracepoints over each call's window, are what there is.
                let traced = row2?["counters"]?["traced_userspace_exits"]?.uint64Value ?? 0
                #expect(traced > 0, "QEMU's exits to userspace over the second window: \(String(describing: row2))")
            }
        }
    }

    /// `vmscope top` in tmux: both VMs listed, Enter attaches (the VMM through its socket; a QEMU whose monitor another
    /// client holds through the trace source: its faults pane fills with kvm_mmio rows, its vCPU threads' exits are
    /// counted from kvm_userspace_exit), q comes back and q quits with the tracefs instance gone.
    @Test func topListsAttachesAndCleansUp() throws {
        let vmm = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop() }
        let qemu: QEMUInstance? = qemuAvailable ? try APICPollingFirmware.startQEMU(qemuConfigurations[0].arguments, monitors: 1) : nil
        defer { qemu?.stop() }
        // Hold QEMU's only monitor: top cannot have it, so its Enter gives a trace-only view.
        let holder = try qemu.map { try ControlClient(path: $0.qmpSockets[0]) }
        defer { holder?.close() }
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) top --interval 0.5; echo TOP-EXIT=$?; sleep 60", width: 160, height: 40)
        defer { t.kill() }
        let vmmPid = String(vmm.process.processIdentifier)
        /// top's pid (the pane runs a shell around it).
        func topPid() -> String { Self.vmscopePid(in: t) }
        var screen = t.waitFor(15) { $0.contains(vmmPid) && (qemu == nil || $0.contains(String(qemu!.process.pid))) }
        #expect(screen.contains("vmscope top") && screen.contains(vmmPid), "\(screen)")

        // The VMM's row: / filter on its pid, Enter attaches through its control socket.
        t.keys("/", vmmPid, "Enter")
        screen = t.waitFor(5) { $0.contains("filter: \(vmmPid)") }
        t.keys("Enter")
        screen = t.waitFor(15) { $0.contains("engine vmm") && $0.contains("1 GFN map") }
        #expect(screen.contains("engine vmm") && screen.contains("1 GFN map"), "the inspector on the VMM's socket:\n\(screen)")
        t.keys("q")
        screen = t.waitFor(10) { $0.contains("back from \(vmm.socket)") }
        #expect(screen.contains("back from \(vmm.socket)"), "\(screen)")

        if let qemu, qemu.accelerator == "kvm" {
            let qpid = String(qemu.process.pid)
            t.keys("/", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", "BSpace", qpid, "Enter")
            _ = t.waitFor(5) { $0.contains("filter: \(qpid)") }
            t.keys("Enter")
            screen = t.waitFor(20) { $0.contains("kernel tracepoints") }
            // The faults pane fills from the trace source: the firmware's local-APIC reads are kvm_mmio rows; the
            // map is their heat.
            screen = t.waitFor(20) { $0.contains("trace/MMIO") }
            #expect(screen.contains("trace/MMIO"),
                    "QEMU's faults through the trace source (instances \(Self.instances()), QEMU \(qemu.accelerator)):\n\(screen)")
            #expect(screen.contains("heat map of KVM's traced accesses"), "QEMU's map, the trace's heat:\n\(screen)")
            t.keys("4")
            screen = t.waitFor(20) { $0.contains("kernel tracepoints") && $0.contains("traced") }
            #expect(screen.contains("kernel tracepoints") && screen.contains("traced"), "QEMU's vCPUs through the trace source:\n\(screen)")
            #expect(Self.instances().contains { $0.hasPrefix("vmscope-\(topPid())-") }, "the attach's own tracefs instance while attached: \(Self.instances())")
            t.keys("q")
            screen = t.waitFor(10) { $0.contains("back from trace of pid \(qpid)") }
            #expect(Self.instances().filter { $0.hasPrefix("vmscope-\(topPid())-") }.isEmpty, "the attach's instance is gone once back in top: \(Self.instances())")
        } else {
            print("topListsAttachesAndCleansUp: no QEMU with KVM here; the trace-only attach is not exercised")
        }
        t.keys("q")
        screen = t.waitFor(10) { $0.contains("TOP-EXIT=") }
        #expect(screen.contains("TOP-EXIT=0"), "\(screen)")
        #expect(!Self.instances().contains { $0.hasPrefix("vmscope-\(topPid())") }, "top's instances are gone: \(Self.instances())")
    }

    /// `top`'s table sleeps between samples, and a key still acts at once: its loop waited for keys 50 ms at a time,
    /// twenty wake-ups a second for a sample every 5 s here (fails that way: 100 and more switches in 5 s).
    @Test func topsTableSleepsBetweenSamplesAndAnswersKeysAtOnce() throws {
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) top --interval 5; echo TOP-EXIT=$?; sleep 60", width: 160, height: 40)
        defer { t.kill() }
        _ = t.waitFor(15) { $0.contains("vmscope top") }
        // The main thread's voluntary switches (each wait that sleeps) over 5 s: one sample, a few reads.
        let pid = Self.vmscopePid(in: t)
        func switches() -> Int? {
            (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/status", encoding: .utf8))?
                .split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") }
                .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
        }
        let before = try #require(switches(), "top's main thread (pid \(pid))")
        sleep(5)
        let after = try #require(switches())
        #expect(after - before <= 40, "\(after - before) wake-ups in 5 s")
        let sent = HostClock.monotonicNs()
        t.keys("s")
        let screen = t.waitFor(5) { $0.contains("sorted by") }
        let tookMs = (HostClock.monotonicNs() - sent) / 1_000_000
        #expect(screen.contains("sorted by") && tookMs < 1000, "a key acted after \(tookMs) ms, mid-interval:\n\(screen)")
        t.keys("q")
        #expect(t.waitFor(10) { $0.contains("TOP-EXIT=") }.contains("TOP-EXIT=0"))
    }

    /// Attached to a stock QEMU's socket, the faults pane is fed by the trace source on QEMU's pid (the socket's peer
    /// credentials) instead of saying QEMU has no fault stream; its instance lives as long as the inspector.
    @Test func attachingToQEMUTracesItsFaultsBesideQMP() throws {
        guard qemuAvailable, TmuxPane.tmux != nil else { print("attachingToQEMUTracesItsFaultsBesideQMP: needs QEMU and tmux"); return }
        let qemu = try APICPollingFirmware.startQEMU(qemuConfigurations[0].arguments, monitors: 1)
        defer { qemu.stop() }
        guard qemu.accelerator == "kvm" else { print("attachingToQEMUTracesItsFaultsBesideQMP: QEMU runs TCG here"); return }
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(qemu.qmpSockets[0]); echo ATTACH-EXIT=$?; sleep 60", width: 200, height: 50)
        defer { t.kill() }
        var screen = t.waitFor(15) { $0.contains("status running") && $0.contains("2 Faults") }
        let inspector = Self.vmscopePid(in: t)
        let ours = { Self.instances().filter { $0 == "vmscope-\(inspector)" } }
        #expect(!ours().isEmpty, "a tracefs instance of the inspector's while attached: \(Self.instances())")
        #expect(!screen.contains("fault stream unavailable"), "the faults pane is fed by the trace source:\n\(screen)")
        #expect(screen.contains("heat map of KVM's traced accesses"), "the map is the trace's heat map:\n\(screen)")
        // The firmware's local-APIC reads, which KVM traces as kvm_mmio at 0xfee00030: rows in the faults pane,
        // and that page lit in the map, which the cursor line reports once the cursor is on it.
        t.keys("1", ":", "goto 0xfee00000", "Enter")
        screen = t.waitFor(20) { $0.contains("not KVM-mapped (device or hole) · cell traced") && $0.contains("trace/MMIO") }
        #expect(screen.contains("not KVM-mapped (device or hole) · cell traced"), "the cursor's cell (holding 0xfee00000) lit:\n\(screen)")
        #expect(screen.contains("trace/MMIO") && screen.contains("attribute wanted not reported"),
                "the faults pane's rows from kvm_mmio, claiming no attribute:\n\(screen)")
        t.keys("q")
        screen = t.waitFor(10) { $0.contains("ATTACH-EXIT=") }
        #expect(screen.contains("ATTACH-EXIT=0"), "\(screen)")
        #expect(!Self.instances().contains { $0.hasPrefix("vmscope-") && !FileManager.default.fileExists(atPath: "/proc/" + $0.dropFirst(8).prefix { $0 != "-" }) },
                "no instance outlives its process: \(Self.instances())")
    }

    /// Attached to vmscope's VMM, the trace source runs beside the VMM's own fault stream: a record the kernel's
    /// kvm_mmio saw too is one row with both sources (`vmm/MMIO+trace`), and the instance goes with the inspector.
    @Test func attachedToTheVMMEachFaultRowSaysTheKernelSawItToo() throws {
        guard TmuxPane.tmux != nil else { print("attachedToTheVMMEachFaultRowSaysTheKernelSawItToo: needs tmux"); return }
        let vmm = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop() }
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(vmm.socket); echo ATTACH-EXIT=$?; sleep 60", width: 200, height: 50)
        defer { t.kill() }
        // The built-in guest's own conversions fault a few times a second (vmm/MMIO records).
        var screen = t.waitFor(30) { $0.contains("vmm/MMIO+trace") }
        #expect(screen.contains("vmm/MMIO+trace"), "a VMM record the kernel traced too, as one row:\n\(screen)")
        let rows = screen.split(separator: "\n").filter { $0.contains("vmm/MMIO") }
        #expect(!rows.isEmpty)
        let inspector = Self.vmscopePid(in: t)
        #expect(Self.instances().contains("vmscope-\(inspector)"), "the inspector's instance while attached: \(Self.instances())")
        t.keys("q")
        screen = t.waitFor(10) { $0.contains("ATTACH-EXIT=") }
        #expect(screen.contains("ATTACH-EXIT=0"), "\(screen)")
        #expect(!Self.instances().contains("vmscope-\(inspector)"), "its instance is gone: \(Self.instances())")
    }
}

/// A child (through ProcessSupport's ChildProcess: default signal mask, so SIGTERM stops it) whose output goes to
/// files the test reads once it has ended.
final class ChildOutput {
    let child: ChildProcess
    let stdoutPath: String, stderrPath: String
    var pid: Int32 { child.pid }

    init(_ argv: [String]) throws {
        let base = NSTemporaryDirectory() + "vmscope-child-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        stdoutPath = base + ".out"
        stderrPath = base + ".err"
        child = try ChildProcess(argv, redirects: .init(stdout: stdoutPath, stderr: stderrPath))
    }

    deinit {
        child.terminate(grace: 1)
        unlink(stdoutPath)
        unlink(stderrPath)
    }

    func kill() { child.signal(SIGKILL) }

    /// Its exit status and output, once it has ended (SIGTERM after `seconds`).
    func wait(seconds: Double) -> Binary.Result {
        let status = child.wait(seconds: seconds) ?? child.terminate(grace: 5)
        func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
        return Binary.Result(status: status, stdout: text(stdoutPath), stderr: text(stderrPath))
    }
}

