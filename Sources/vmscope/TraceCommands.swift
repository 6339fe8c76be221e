import ArgumentParser
import CKVM
import ControlProtocol
import Exporter
import Foundation
import Logging
import Inspector
import ProcessSupport
import Synchronization
import HostTracing
import Libvirt
import KVM

private let traceStop = Atomic<Int32>(0)
/// Set by SIGUSR1: print the traced private/shared map now.
private let traceMapWanted = Atomic<Int32>(0)

/// For the tracers (`trace`, `top`): freed memory stays in the heap for the next read. A read's batches (its events,
/// them in time order, what pairing gives out) are arrays of hundreds of KiB, made and freed every read, and glibc gave
/// them fresh pages each time (a mapping of their own, or a heap top it trimmed when they were freed): the kernel
/// faulted in and zeroed every page again. In the lab, the paired tracer of `vmscope-bench --only tracecost`'s
/// workload took 389–7,979 page faults in 20 s with glibc's defaults and 33–125 like this, and its system time fell
/// from 44–84 ticks to 41–47 (its user time stayed at 68–74). The heap keeps at most 64 MiB it could give back.
func keepFreedMemoryForReuse() {
    _ = mallopt(M_MMAP_THRESHOLD, 32 << 20)
    _ = mallopt(M_TRIM_THRESHOLD, 64 << 20)
}

/// `vmscope trace PID`: the decoded KVM tracepoint stream of one process's threads, on stdout.
struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Print the KVM tracepoint events of one VMM process's threads, decoded (any VMM; needs root or tracefs access).",
        discussion: """
            Events come from a private tracefs instance (instances/vmscope-PID), filtered to the process's threads and \
            removed on exit (and by the next start, after a SIGKILL). Global tracing state is not touched. Under the \
            software KVM of some hosts only kvm_userspace_exit and kvm_mmio fire; on hardware KVM kvm_page_fault and \
            kvm_exit do too. With --json each event is one JSON object a line. Exit status 2 when tracing cannot start \
            (the reason and the fix on stderr).

            Where the kernel traces KVM_SET_MEMORY_ATTRIBUTES (kvm_vm_set_mem_attributes, Linux 6.17 and later with \
            memory attributes, and the system-call tracepoints), each request is paired with the same thread's ioctl \
            result and printed as a "conversion" (applied only when the ioctl returned 0), and the VM's private/shared \
            map so traced is printed as an "attribute-map" on SIGUSR1 and at the end. Pages no traced conversion \
            covered are unknown unless the trace began before the process had a VM: --exec starts the command under \
            the trace (same pid, traced from its first instruction), so its map is complete.
            """)

    @Argument(help: "The VMM's process id (not with --load-raw or --exec).") var pid: Int32?
    @Flag(help: "Print only what vmscope pairs from the events: conversions (with their ioctl's result), memory faults (a kvm_page_fault, then a MEMORY_FAULT exit on the same thread), the guest's KVM_HC_MAP_GPA_RANGE requests (pending until its vCPU goes back in) and the attribute map.")
    var pairedOnly = false
    @Flag(help: "Start the command after -- under the trace (traced from its first instruction: a complete private/shared map); exit with its status.")
    var exec = false
    @Argument(parsing: .postTerminator, help: ArgumentHelp("With --exec: the command and its arguments.", valueName: "command"))
    var command: [String] = []
    @Flag(help: "One JSON object a line.") var json = false
    @Option(help: "Stop after this long, e.g. 10s (default: until Ctrl-C or the process exits).") var duration: String?
    @Option(help: "Comma-separated events (default: all of kvm_userspace_exit, kvm_mmio, kvm_hypercall, kvm_page_fault, kvm_exit).")
    var events: String?
    @Option(help: ArgumentHelp("Also save the raw records, with the layouts they were written in, to FILE (for a ticket; --load-raw decodes it anywhere).",
                               valueName: "FILE"))
    var saveRaw: String?
    @Option(help: ArgumentHelp("Decode records saved by --save-raw instead of tracing a process (streamed: any size; a damaged line stops it there, named, exit 2).", valueName: "FILE"))
    var loadRaw: String?
    @Option(name: .customLong("buffer-kib"), help: ArgumentHelp("Each CPU's buffer in the session's tracefs instance, in KiB (\(TraceSession.bufferKiBRange.lowerBound) to \(TraceSession.bufferKiBRange.upperBound); trace-cmd's -b). Events that come faster than they are read for longer than it holds are lost, counted.",
                               valueName: "KiB"))
    var bufferKiB: Int = TraceSession.defaultBufferKiB
    @Option(name: .customLong("read-interval"), help: ArgumentHelp("How often to read the kernel's buffers while events come slowly, in ms (\(TracePacer.readIntervalMsRange.lowerBound) to \(TracePacer.readIntervalMsRange.upperBound); trace-cmd's -s). Default \(TracePacer.traceLongestNs / 1_000_000) with the default buffer, shorter with a smaller one; reads come sooner as the stream grows. Each read costs the traced VM's CPUs a fixed part, whatever it brings.",
                               valueName: "ms"))
    var readIntervalMs: UInt64?
    @Option(name: .customLong("pairing"), help: ArgumentHelp("With --paired-only: who pairs each MEMORY_FAULT exit with the page fault before it, and each KVM_SET_MEMORY_ATTRIBUTES with its ioctl's result. auto: the kernel where it has histogram triggers (then kvm_page_fault and the other ioctls' returns, most of the events, are not read), else vmscope; kernel: the kernel or nothing (exit 2 where it cannot pair both); vmscope: vmscope, from the events.",
                                                           valueName: "auto|kernel|vmscope"))
    var pairingChoice: PairingChoice = .auto

    enum PairingChoice: String, ExpressibleByArgument, CaseIterable { case auto, kernel, vmscope }

    func validate() throws {
        if exec {
            guard !command.isEmpty else { throw ValidationError("--exec needs a command after --, e.g. vmscope trace --exec -- vmscope vmm --socket vm.sock") }
            guard pid == nil, loadRaw == nil else { throw ValidationError("--exec starts its own process: it takes no process id and no --load-raw") }
        } else {
            guard command.isEmpty else { throw ValidationError("a command after -- needs --exec") }
            switch (pid, loadRaw) {
            case (nil, nil): throw ValidationError("name the VMM's process id, --exec -- COMMAND, or --load-raw FILE")
            case (.some, .some): throw ValidationError("--load-raw decodes a file: it takes no process id")
            default: break
            }
        }
        if loadRaw != nil && (duration != nil || saveRaw != nil) {
            throw ValidationError("--load-raw decodes a file: --duration and --save-raw do not go with it")
        }
        guard TraceSession.bufferKiBRange.contains(bufferKiB) else {
            throw ValidationError("--buffer-kib \(bufferKiB) is not from \(TraceSession.bufferKiBRange.lowerBound) to \(TraceSession.bufferKiBRange.upperBound)")
        }
        if loadRaw != nil && bufferKiB != TraceSession.defaultBufferKiB {
            throw ValidationError("--load-raw decodes a file: --buffer-kib does not go with it")
        }
        if let readIntervalMs {
            guard TracePacer.readIntervalMsRange.contains(readIntervalMs) else {
                throw ValidationError("--read-interval \(readIntervalMs) is not from \(TracePacer.readIntervalMsRange.lowerBound) to \(TracePacer.readIntervalMsRange.upperBound) ms")
            }
            guard loadRaw == nil else { throw ValidationError("--load-raw decodes a file: --read-interval does not go with it") }
        }
        if pairingChoice != .auto {
            guard pairedOnly else { throw ValidationError("--pairing goes with --paired-only (printing every event needs them all read)") }
            guard loadRaw == nil else { throw ValidationError("--load-raw decodes a file: who paired its events is in it; --pairing does not go with it") }
        }
        if let duration, parseDuration(duration) == nil {
            throw ValidationError("--duration '\(duration)' is not a duration from 0 to a year (e.g. 10, 10s, 5m)")
        }
        if let events {
            let known = Set(EventLayouts.decoded.map(\.name))
            for e in events.split(separator: ",") where !known.contains(String(e)) {
                throw ValidationError("--events: '\(e)' is not one of \(known.sorted().joined(separator: ", "))")
            }
        }
    }

    func run() throws {
        var err = StandardError()
        keepFreedMemoryForReuse()
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { signal(sig) { s in traceStop.store(s, ordering: .relaxed) } }
        // First thing, as the others: a SIGUSR1 that came while tracing was being set up would otherwise end the process.
        signal(SIGUSR1) { _ in traceMapWanted.store(1, ordering: .relaxed) }
        let wanted = events.map { Set($0.split(separator: ",").map(String.init)) }
        // The flags as plain values: ArgumentParser's property wrappers cost hundreds of instructions a read, and
        // they are read for every event.
        let json = self.json, pairedOnly = self.pairedOnly
        // The events --events names, where others may come too (a recording, or the ioctls a conversion is paired
        // with): nil when every event is one of them, which spares a string's hash an event.
        var shownOnly = wanted
        // Standard output through POSIX writes: a reader that went away (`| head`) ends the trace quietly (SIGPIPE is
        // caught above), and the session's instance is removed on the way out, instead of a trap in FileHandle.
        var outputClosed = false
        /// Every line this command prints goes through here.
        func output(_ text: String) { output(Array(text.utf8)) }
        func output(_ bytes: [UInt8]) { bytes.withUnsafeBufferPointer { output($0) } }
        func output(_ bytes: UnsafeBufferPointer<UInt8>) {
            guard !bytes.isEmpty, !outputClosed else { return }
            if let failed = writeAll(STDOUT_FILENO, bytes) {
                outputClosed = true
                traceStop.store(SIGPIPE, ordering: .relaxed)
                if failed != EPIPE { print("vmscope trace: standard output: \(String(cString: strerror(failed))); stopped", to: &err) }
            }
        }
        // One buffer for every read's JSON, its memory kept from one read to the next.
        let jsonOut = JSONOutput(capacity: 1 << 16)
        func emit(_ batch: [TraceEvent]) {
            guard !pairedOnly else { return }
            // Written as bytes, each event straight into one buffer: as a JSON tree made into a String a line, joined,
            // then copied out, an event took 11,000 instructions (callgrind, a recording replayed), most of them in
            // making the tree and the text; appended piece by piece to an [UInt8], 4,800 (`trace-json-instr-per-event`).
            if json {
                jsonOut.removeAll()
                TraceEvent.writeJSONLines(batch, shownOnly: shownOnly, to: jsonOut)
                output(jsonOut.bytes)
                return
            }
            var bytes: [UInt8] = []
            bytes.reserveCapacity(batch.count * 128)
            for e in batch where shownOnly?.contains(e.name) ?? true {
                bytes.append(contentsOf: e.line.utf8)
                bytes.append(0x0A)
            }
            output(bytes)
        }
        /// The batch's conversions (then their steps, once the thread re-entered), the guest's requests and memory
        /// faults, in the order the kernel gave their events; `missed`: the kernel dropped events before it.
        func pair(_ batch: [TraceEvent], _ pairing: inout TracePairing, missed: Bool) {
            var paired: [TracePairing.Paired] = missed ? pairing.forget() : []
            pairing.apply(batch, into: &paired)
            // Into one buffer of bytes, each record written straight (`JSONObjectRecord`); before, each record made a tree,
            // then a String, and the batch's were joined and copied out again.
            if json {
                jsonOut.removeAll()
                for p in paired {
                    p.writeJSON(to: jsonOut)
                    jsonOut.append(0x0A)
                }
                output(jsonOut.bytes)
                return
            }
            var bytes: [UInt8] = []
            for p in paired {
                bytes.append(contentsOf: p.line.utf8)
                bytes.append(0x0A)
            }
            output(bytes)
        }
        func emitMap(_ pairing: TracePairing) {
            guard let line = json ? pairing.mapJSON()?.serialized : pairing.mapLine().map(terminalSafe) else { return }
            output(line + "\n")
        }
        /// What was still pending when the events ended is said as such (with or without a map to list it in), then the map.
        func finish(_ pairing: inout TracePairing) {
            output(pairing.drain().map { (json ? $0.json.serialized : $0.line) + "\n" }.joined())
            output(pairing.pendingRequests.map { (json ? $0.json.serialized : $0.line) + "\n" }.joined())
            emitMap(pairing)
        }
        if let loadRaw {
            do {
                // Streamed: a recording of any length decodes in the memory of one chunk. With --paired-only its
                // events are paired as a live trace's are (the file says nothing of the time before it: pages no
                // conversion in it covered are unknown).
                var count = 0
                var pairing: TracePairing?
                let reader = try RawTraceRecording.stream(path: loadRaw) { (batch, reader) throws(TraceError) in
                    guard let layouts = reader.layouts else { return }
                    let events = batch.compactMap(layouts.decode)
                    emit(events)
                    if pairedOnly {
                        var p = pairing ?? TracePairing(tracesConversions: TracePairing.tracesConversions(layouts), complete: false,
                                                        faultsPairedInKernel: TracePairing.faultsPairedInKernel(layouts))
                        pair(events, &p, missed: false)
                        pairing = p
                    }
                    count += batch.count
                    if outputClosed { throw TraceError("standard output closed") }
                }
                if var pairing { finish(&pairing) }
                print("vmscope trace: \(count) records of kernel \(terminalSafe(reader.kernel)) decoded from \(loadRaw)"
                      + (reader.cutShort ? "; it ends inside line \(reader.line) (its writer was cut short: a full disk, a kill), which is left out" : ""),
                      to: &err)
            } catch {
                if outputClosed { return }
                print("vmscope trace: \(error)", to: &err)
                throw ExitCode(2)
            }
            return
        }
        // --exec: the command waits at a gate (a shell blocked on a FIFO) until its pid is traced, then execs in place.
        var child: ChildProcess?
        var gate: String?
        if exec {
            let dir = NSTemporaryDirectory() + "vmscope-trace-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            guard mkdir(dir, 0o700) == 0, mkfifo(dir + "/gate", 0o600) == 0 else {
                print("vmscope trace --exec: cannot make a gate in \(dir): \(String(cString: strerror(errno)))", to: &err)
                throw ExitCode(2)
            }
            gate = dir + "/gate"
            // posix_spawn and waitpid (not Foundation's Process, whose exit monitor missed the child's end in the lab).
            do { child = try ChildProcess(["/bin/sh", "-c", "read _ < \"$0\" && exec \"$@\"", dir + "/gate"] + command, redirects: .inherited) } catch {
                print("vmscope trace --exec: \(error)", to: &err)
                throw ExitCode(2)
            }
        }
        defer {
            if let gate {
                unlink(gate)
                rmdir((gate as NSString).deletingLastPathComponent)
            }
        }
        guard let pid = pid ?? child.map({ $0.pid }) else { return }
        let session: TraceSession
        // Asked for kvm_vm_set_mem_attributes, the session also takes the ioctl events that pair it with results.
        // --paired-only (without --events) needs only what it pairs: not kvm_exit and kvm_mmio, which fire on most
        // exits (each one an event the kernel writes and this process reads: in the lab they took a third of the
        // guest's progress).
        let needed = wanted ?? (pairedOnly ? Set(EventLayouts.pairedEvents) : nil)
        let sessionEvents = needed.map { $0.contains("kvm_vm_set_mem_attributes") ? $0.union(EventLayouts.conversionPairing) : $0 }
        if let wanted, sessionEvents == wanted { shownOnly = nil }
        do {
            session = try TraceSession(pid: pid, events: sessionEvents.map(Array.init), bufferKiB: bufferKiB,
                                       pairInKernel: pairedOnly && pairingChoice != .vmscope ? .all : [])
        } catch {
            print("vmscope trace: \(error)", to: &err)
            child?.terminate()
            throw ExitCode(2)
        }
        defer { session.close() }
        if pairingChoice == .kernel, let why = session.kernelPairingRefused {
            print("vmscope trace: --pairing kernel: the kernel cannot pair here: \(why)", to: &err)
            child?.terminate()
            throw ExitCode(2)
        }
        // The traced private/shared map, where this kernel can give one (asked after tracing is on: a process with no
        // VM then has every VM traced from its creation), the guest's requests (pending until its vCPU goes back in;
        // what the VMM did between is known where conversions are traced), conversions' steps and memory faults.
        var pairing = TracePairing(tracesConversions: TracePairing.tracesConversions(session.layouts),
                                   complete: child != nil || !HostProcess.hasVM(pid: pid),
                                   faultsPairedInKernel: session.faultsPairedInKernel)
        if let gate {
            // Open the gate: the shell reads its line and execs the command, under the trace.
            let fd = open(gate, O_WRONLY | O_CLOEXEC)
            if fd >= 0 { _ = writeAll(fd, [0x0A]); close(fd) }
        }
        var missedSeen: UInt64 = 0
        // --save-raw: the header now, then each batch's records as they come, with POSIX writes (a full disk is
        // reported by its errno, and what was written before it decodes).
        var rawFD: Int32 = -1
        func saveRaw(_ text: String) throws {
            if let failed = writeAll(rawFD, Array(text.utf8)) {
                print("vmscope trace: --save-raw \(self.saveRaw ?? ""): \(String(cString: strerror(failed))); stopped", to: &err)
                throw ExitCode(2)
            }
        }
        if let path = self.saveRaw {
            rawFD = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard rawFD >= 0 else {
                print("vmscope trace: --save-raw \(path): cannot create (\(String(cString: strerror(errno))))", to: &err)
                throw ExitCode(2)
            }
            try saveRaw(RawTraceRecording.headerLine(kernel: RawTraceRecording.runningKernel, layouts: session.layouts))
            session.keepRaw = true
        }
        defer { if rawFD >= 0 { close(rawFD) } }
        var who = ""
        if pairedOnly {
            who = "; " + (session.kernelPairing ?? "paired by vmscope")
            if let why = session.kernelPairingRefused { who += " (the kernel pairs \(session.kernelPairing == nil ? "nothing" : "no more"): \(why))" }
        }
        print("vmscope trace: tracing process \(pid) in tracefs instance \(session.name)" + who
              + (pairing.attributes == nil ? "; no private/shared map: this kernel does not trace KVM_SET_MEMORY_ATTRIBUTES with its result (kvm_vm_set_mem_attributes and sys_exit_ioctl)" : ""),
              to: &err)
        func saveKept() throws {
            guard rawFD >= 0 else { return }
            let kept = session.takeRaw()
            if !kept.isEmpty { try saveRaw(kept.map(RawTraceRecording.line).joined()) }
        }
        let deadline = duration.flatMap(parseDuration).map { HostClock.monotonicNs() + $0 }
        var exitStatus: Int32?
        var pacer = TracePacer(bufferKiB: bufferKiB, longestNs: readIntervalMs.map { $0 * 1_000_000 } ?? TracePacer.traceLongestNs(bufferKiB: bufferKiB))
        while traceStop.load(ordering: .relaxed) == 0 {
            let batch = session.read()
            emit(batch)
            pair(batch, &pairing, missed: session.missedSince(&missedSeen) > 0)
            if traceMapWanted.exchange(0, ordering: .relaxed) != 0 { emitMap(pairing) }
            try saveKept()
            if let deadline, HostClock.monotonicNs() >= deadline { break }
            if let child, let status = child.poll() {
                exitStatus = status
                print("vmscope trace: process \(pid) exited (status \(status))", to: &err)
                break
            }
            if child == nil, kill(pid, 0) != 0 && errno == ESRCH { print("vmscope trace: process \(pid) exited", to: &err); break }
            // Not past --duration's end (a read interval may be long).
            let wait = pacer.next(afterReading: batch.count), now = HostClock.monotonicNs()
            usleep(UInt32(min(wait, deadline.map { $0 > now ? $0 - now : 0 } ?? wait) / 1000))
        }
        // What it did last is in the buffers still (or held back by the last read, for order): all of it, in order.
        let rest = session.read(final: true)
        emit(rest)
        pair(rest, &pairing, missed: session.missedSince(&missedSeen) > 0)
        try saveKept()
        finish(&pairing)
        print("vmscope trace: \(session.decoded) events decoded, \(session.missed) dropped by the kernel's buffer, \(session.foreign) from other threads discarded; \(session.reads) reads"
              + (session.missedUncounted ? "; the kernel did not count every event it dropped: at least \(session.missed)" : ""),
              to: &err)
        if let child {
            if child.poll() == nil { child.terminate(grace: 10) }
            if let exitStatus, exitStatus != 0 { throw ExitCode(exitStatus) }
        }
    }
}

extension TraceEvent {
    /// One line for people: time, thread, event and its decoded fields.
    var line: String {
        let fields = members.dropFirst(4).map { k, v in
            let text: String = switch v {
            case .string(let s): s
            case .array(let a): a.compactMap(\.stringValue).joined(separator: "|")
            case .int(let i): String(i)
            case .uint(let u): TraceEvent.addressMembers.contains(k) ? "0x" + String(u, radix: 16) : String(u)
            default: v.serialized
            }
            return "\(k)=\(text)"
        }
        let name = members.first?.1.stringValue ?? "?"
        // Names and strings come from the kernel's formats or a raw file's header: shown, never acted on.
        return terminalSafe(String(format: "%.6f", Double(timeNs) / 1e9) + " tid \(tid) cpu \(cpu) \(name) " + fields.joined(separator: " "))
    }
}

/// `vmscope top`: every KVM VM on the host.
/// Set by SIGINT/SIGTERM/SIGHUP while `top --metrics` serves.
private let metricsStop = Atomic<Int32>(0)

struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "List every KVM VM on the host (KVM's debugfs and /proc): pid, name, vCPUs, exits/s by reason, MMIO/s, hypercalls/s, RSS.",
        discussion: """
            Needs root (debugfs is mounted read-only if it is not). Without --once: a table refreshed every --interval; \
            s sorts, / filters, Enter attaches (to the VMM's control socket when its command line names one and it \
            answers, else a trace-only view), q quits. --once prints one table (or --json) from two samples \
            --interval apart.
            """)

    @Flag(help: "Print once and exit (no terminal UI).") var once = false
    @Flag(help: "With --once: JSON instead of a table.") var json = false
    @Option(help: "Seconds between the two samples rates are computed from (with --metrics: between collections).")
    var interval: Double = 1
    @Option(help: ArgumentHelp("Serve Prometheus metrics of every VM at http://ADDR:PORT/metrics instead of showing the table (:PORT is loopback; another address only when given).",
                               valueName: "ADDR:PORT"))
    var metrics: String?

    func validate() throws {
        guard interval >= 0.1 && interval <= 60 else { throw ValidationError("--interval must be between 0.1 and 60 seconds") }
        if let metrics {
            do { _ = try parseListenAddress(metrics) } catch { throw ValidationError("--metrics \(error)") }
            if once || json { throw ValidationError("--metrics serves until stopped: it does not go with --once or --json") }
        }
    }

    @OptionGroup var options: InspectorOptions

    func run() throws {
        keepFreedMemoryForReuse()
        if let metrics { return try serveMetrics(metrics) }
        do throws(TraceError) {
            if once { try printOnce() } else { try interactive() }
        } catch {
            var err = StandardError()
            print("vmscope top: \(error)", to: &err)
            throw ExitCode(2)
        }
    }

    /// The table, sampled every `interval`; Enter opens the inspector on the selected VM (its control socket when
    /// one is found and answers, else a trace-only view), q there comes back here.
    private func interactive() throws(TraceError) {
        let (traced, tracedWhy) = HostVMs.TracedCounts.start()
        let cache = HostVMs.SampleCache()
        var previous = try HostVMs.sample(traced: traced, cache: cache)
        var sampledAt = HostClock.monotonicNs()
        var view = TopView()
        view.ascii = options.useASCII
        if let tracedWhy { view.status = ("USEREXIT/s unavailable: \(tracedWhy)", true) }
        view.notTraced = tracedWhy
        let (themes, order, _) = options.loadThemes()
        view.themeNames = order
        let terminal = Terminal(theme: themes[order[0]] ?? .mono)
        defer { terminal.close() }
        var applied = 0
        var dirty = true
        while Terminal.interrupted.load(ordering: .relaxed) == 0 {
            let now = HostClock.monotonicNs()
            if now - sampledAt >= UInt64(interval * 1e9) {
                let current = (try? HostVMs.sample(traced: traced, cache: cache)) ?? previous
                view.rows = HostVMs.rows(before: previous, after: current, intervalNs: now - sampledAt)
                previous = current
                sampledAt = now
                dirty = true
            }
            if view.themeIndex != applied { applied = view.themeIndex; terminal.apply(themes[view.themeNames[applied]] ?? .mono) }
            if dirty {
                let (w, h) = terminal.size
                terminal.paint(view.render(width: w, height: h))
                dirty = false
            }
            // A key typed already (at once, not within 50 ms), else sleep until one is or the next sample is due.
            guard let key = terminal.typedKeys(limit: 1).first else {
                let due = sampledAt &+ UInt64(interval * 1e9)
                let now = HostClock.monotonicNs()
                terminal.waitForInput(ms: due > now ? Int((due - now) / 1_000_000) + 1 : 0)
                continue
            }
            dirty = true
            switch view.handle(key) {
            case .quit?: return
            case .attach(let pid)?: view.status = attach(pid, terminal: terminal, themes: themes, order: order)
            case nil: break
            }
        }
    }

    /// The inspector on `pid` in this terminal until q; returns what the status line says back in `top`.
    private func attach(_ pid: Int32, terminal: Terminal, themes: ThemeCatalog, order: [String]) -> (text: String, isError: Bool) {
        let source: any VMSource
        var session: TraceSession?
        var what: String
        var traced: TracedSocketSource?
        if let domain = HostProcess.libvirtDomain(pid: pid) {
            // libvirt holds this QEMU's monitor: through libvirt, as `attach libvirt:UUID` does.
            do {
                let libvirt = try LibvirtSource(domain: try LibvirtConnection().domain(domain.uuid))
                traced = TracedSocketSource(socket: libvirt)
                source = traced!
                what = "libvirt domain \(domain.name)"
            } catch {
                return ("cannot attach to libvirt domain \(domain.name): \(error)", true)
            }
        } else if let socket = HostVMs.controlSocket(pid: pid), let client = try? ControlClient(path: socket, timeoutMs: 1000, decodeFaults: true) {
            // The same view as `attach SOCKET`: a QEMU's faults pane and heat map from its tracepoints, a vmscope
            // VMM's rows corroborated by them (it showed "fault stream unavailable" for a QEMU).
            traced = TracedSocketSource(socket: SocketSource(path: socket, client: client))
            source = traced!
            what = socket
        } else {
            do { session = try TraceSession(pid: pid, pairInKernel: .ioctlResults) } catch { return ("cannot trace \(pid): \(error)", true) }
            source = TraceSource(session: session!)
            what = "trace of pid \(pid)"
        }
        defer { session?.close() }
        let inspector = InspectorSession(source: source, themes: themes, themeOrder: order, ascii: options.useASCII,
                                         readOnly: options.readOnly)
        inspector.ui.allowControl = options.allowControl
        inspector.ui.status = ("attached to \(what); q comes back to top", false)
        inspector.run(terminal: terminal)
        traced?.socket.close()
        traced?.close()
        return ((["back from \(what)"] + inspector.exitMessages).joined(separator: "; "), false)
    }

    /// `--metrics`: every VM's series, collected every `interval`, served until SIGINT or SIGTERM.
    private func serveMetrics(_ address: String) throws {
        var err = StandardError()
        for sig in [SIGINT, SIGTERM, SIGHUP] { signal(sig) { s in metricsStop.store(s, ordering: .relaxed) } }
        signal(SIGPIPE, SIG_IGN)
        let logger = Logger(label: "vmscope.metrics")
        // A host whose VMs cannot be listed at all is one line and exit 2, not an empty page.
        do { _ = try HostVMs.kvmDirectory() } catch {
            print("vmscope top: \(error)", to: &err)
            throw ExitCode(2)
        }
        let collector = HostCollector(logger: logger)
        defer { collector.close() }
        let endpoint: MetricsEndpoint
        do {
            endpoint = try MetricsEndpoint(address: address, interval: interval, logger: logger) { try? collector.collect(store: $0) }
        } catch {
            print("vmscope top: \(error)", to: &err)
            throw ExitCode(2)
        }
        defer { endpoint.stop() }
        if let why = collector.tracedUnavailable {
            print("vmscope top: exits to userspace are not traced (\(why)); KVM's statistics are still exported", to: &err)
        }
        print("vmscope top: serving Prometheus metrics at \(endpoint.url); SIGINT or SIGTERM stops", to: &err)
        while metricsStop.load(ordering: .relaxed) == 0 { usleep(200_000) }
    }

    private func printOnce() throws(TraceError) {
        // Exits to userspace and MMIO counted from tracepoints too, where tracing can start (else those columns are -,
        // and the legend says why: which packages to install, or root).
        let (traced, notTraced) = HostVMs.TracedCounts.start()
        let t0 = HostClock.monotonicNs()
        let cache = HostVMs.SampleCache()
        let before = try HostVMs.sample(traced: traced, cache: cache)
        usleep(useconds_t(interval * 1e6))
        let after = try HostVMs.sample(traced: traced, cache: cache)
        let rows = HostVMs.rows(before: before, after: after, intervalNs: HostClock.monotonicNs() - t0)
        // In JSON too, why the traced counters are missing (a script sees no `traced_*` key otherwise, and no reason).
        print(json ? JSON.object([("vms", .array(rows.map(\.json))), ("not-traced", .opt(notTraced.map(JSON.string)))]).serialized
                   : Self.table(rows, notTraced: notTraced))
    }

    static func table(_ rows: [HostVMs.Row], notTraced: String? = nil) -> String {
        var view = TopView()
        view.rows = rows
        let lines = view.shown.map(TopView.line)
        let legend = TopView.dashLegend(view.shown, notTraced: notTraced).map { [$0] } ?? []
        return ([TopView.header(sortedBy: view.sort)] + (lines.isEmpty ? ["(no KVM VMs)"] : lines) + legend).joined(separator: "\n")
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
