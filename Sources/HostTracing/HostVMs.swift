import Foundation
import KVM
import ProcessSupport
import Schema

/// Every KVM VM on the host, as KVM's debugfs lists them (`/sys/kernel/debug/kvm/PID-FD/`, one directory a VM with
/// its statistics summed over its vCPUs and a `vcpuN` directory each) and /proc describes their processes.
public enum HostVMs {
    public static let debugfsKVM = "/sys/kernel/debug/kvm"

    /// debugfs's KVM directory, mounting debugfs read-only if it is not; a one-line error naming the fix otherwise.
    public static func kvmDirectory() throws(TraceError) -> String {
        // stat, not FileManager: `top` and the exporter ask each pass.
        var st = stat()
        if stat(debugfsKVM, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { return debugfsKVM }
        if !FileManager.default.fileExists(atPath: "/sys/kernel/debug/kvm") {
            let rc = mount("none", "/sys/kernel/debug", "debugfs", UInt(MS_RDONLY), nil)
            if rc != 0 {
                throw TraceError("KVM's debugfs (\(debugfsKVM)) is not there and debugfs could not be mounted", errno: errno, ": run as root, or mount -t debugfs -o ro none /sys/kernel/debug")
            }
        }
        guard FileManager.default.fileExists(atPath: debugfsKVM) else {
            throw TraceError("\(debugfsKVM) does not exist: is the kvm module loaded?")
        }
        return debugfsKVM
    }

    /// One VM now: its counters (cumulative), from debugfs and /proc.
    public struct Sample: Sendable, Equatable {
        public var pid: Int32
        /// The VM's debugfs directory (`PID-FD`): a process may hold several VMs.
        public var directory: String
        public var name: String
        public var vcpus: Int
        public var stats: [String: UInt64]
        public var rssBytes: UInt64?
        /// Why KVM's own counters (exits, MMIO, hypercalls) are missing for this VM, when they are: `top` shows
        /// `-` for them and says this.
        public var countersMissing: String? = nil
        /// The libvirt domain this QEMU runs (`HostProcess.libvirtDomain`), nil for any other process.
        public var libvirt: LibvirtIdentity?
        /// The process's command name (/proc/PID/comm) and its control socket (`HostVMs.controlSocket`), as last
        /// found (`SampleCache.rescanNs`): what the exporter asks for its VMM's own metrics, each pass.
        public var command = ""
        public var controlSocket: String?

        public init(pid: Int32, directory: String, name: String, vcpus: Int, stats: [String: UInt64], rssBytes: UInt64? = nil,
                    countersMissing: String? = nil) {
            self.pid = pid; self.directory = directory; self.name = name; self.vcpus = vcpus; self.stats = stats
            self.rssBytes = rssBytes; self.countersMissing = countersMissing
        }
    }

    /// A libvirt domain's name and UUID.
    public struct LibvirtIdentity: Sendable, Equatable {
        public var name: String
        public var uuid: String
        public init(name: String, uuid: String) { self.name = name; self.uuid = uuid }
    }

    /// KVM's names of the statistics `top` has columns for.
    public enum Stat {
        public static let exits = "exits", mmio = "mmio_exits", hypercalls = "hypercalls"
        /// The per-reason exit statistics end in this (`io_exits`, `halt_exits`, ...).
        public static let exitsSuffix = "_exits"
        /// Counted by `top` from tracepoints: exits to userspace (`kvm_userspace_exit`) and `kvm_mmio` events.
        public static let tracedUserspaceExits = "traced_userspace_exits", tracedMMIO = "traced_mmio"
        /// Of those exits to userspace, the memory-fault exits (`KVM_EXIT_MEMORY_FAULT`: a guest's access met the
        /// other attribute than it wanted, on a VM with private memory).
        public static let tracedMemoryFaults = "traced_memory_faults"
        /// Bytes the traced map knows private (`TracedAttributes`, since the trace began: a lower bound where pages were
        /// converted before it), where the kernel traces conversions (Linux 6.17 and later).
        public static let tracedPrivateBytes = "traced_private_bytes"
        /// What a `KVM_RUN` that failed is counted as, beside the exit reasons.
        public static let errorReason = "error"
    }

    /// The statistics `top` shows, among those KVM keeps per VM.
    public static let shownStats = ["exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "hypercalls", "insn_emulation",
                                   "signal_exits", "irq_window_exits", "nmi_window_exits", "request_irq_exits", "l1d_flush"]

    /// Exits to userspace and MMIO exits counted from KVM's tracepoints, per process: what `top` shows where KVM's
    /// own counters cannot be read (a VMM holding no statistics file, debugfs closed by lockdown). A trace session of
    /// every process's KVM exits (and the VMMs' conversions, where the kernel traces them), whose events
    /// `TracedTally` counts and pairs.
    public final class TracedCounts: @unchecked Sendable {
        // @unchecked: `top`'s one thread uses it.
        public let session: TraceSession
        public let tally = TracedTally()

        /// Exits to userspace of process `pid` by KVM_EXIT reason name (`MMIO`, `IO`, `MEMORY_FAULT`, ...).
        public func userspaceExitsByReason(_ pid: Int32) -> [String: UInt64] { tally.userspaceExitsByReason(pid) }
        /// Exits to userspace of every reason, per process.
        public func userspaceExits(_ pid: Int32) -> UInt64 { tally.userspaceExits(pid) }
        /// Exits to userspace of one reason, per process.
        public func userspaceExits(_ pid: Int32, reason: ExitReason) -> UInt64 { tally.userspaceExits(pid, reason: reason) }
        /// `kvm_mmio` events of process `pid`.
        public func mmio(_ pid: Int32) -> UInt64 { tally.mmio(pid) }
        /// Conversion steps of `pid` left out since the last `takeConversionSteps` (more than `stepsLimit` between two).
        public func stepsDropped(_ pid: Int32) -> UInt64 { tally.stepsDropped(pid) }
        /// Whether conversions are traced (the kernel has `kvm_vm_set_mem_attributes` and the system-call events).
        public var tracesConversions: Bool { TracePairing.tracesConversions(session.layouts) }

        public init() throws(TraceError) {
            // The conversions' results paired in the kernel where it can: read as they come, every KVM_RUN's return
            // (sys_exit_ioctl, which no filter can tell from a conversion's) was half of `top`'s CPU in one lab boot
            // (42-49 ms/s, 21-23 without the ioctl events, 16-17 untraced; the lab's pace differs boot to boot).
            session = try TraceSession(pid: nil, events: ["kvm_userspace_exit", "kvm_mmio", "kvm_vm_set_mem_attributes"]
                                       + EventLayouts.conversionPairing, pairInKernel: .ioctlResults)
        }

        /// A session started, or why none could be (the packages to install, root, tracefs): what `top` and the
        /// exporter show in place of the traced counters.
        public static func start() -> (counts: TracedCounts?, unavailable: String?) {
            do { return (try TracedCounts(), nil) } catch { return (nil, error.description) }
        }

        /// The VMMs whose conversions to pair (their threads' ioctls are traced; every process's would be far more).
        /// What is kept of processes that have ended goes (`TracedTally.follow`).
        public func follow(_ pids: Set<Int32>) {
            if tracesConversions { session.pairConversions(ofThreadsOf: pids) }
            tally.follow(pids)
        }
        /// The processes something is kept for.
        var processesKept: Set<Int32> { tally.processesKept }
        func process(ofThread tid: Int32) -> (pid: Int32, process: TracedTally.Process) { tally.process(ofThread: tid) }

        /// The conversion steps timed for `pid` since the last call.
        public func takeConversionSteps(_ pid: Int32) -> [ConversionStepTimes] { tally.takeConversionSteps(pid) }

        /// Bytes the traced map of `pid` knows private.
        public func privateBytes(_ pid: Int32) -> UInt64? {
            guard tracesConversions else { return nil }
            return tally.privateBytes(pid)
        }

        /// Takes what the buffers hold.
        public func update() {
            let pairs = tracesConversions
            for e in session.read() { tally.take(e, pairs: pairs) }
            // Events the kernel dropped may have been conversions: no traced map is exact any more.
            if session.missedSince(&missedSeen) > 0 { tally.forgetMaps() }
        }
        private var missedSeen: UInt64 = 0
    }

    public static func sample(traced: TracedCounts? = nil, cache: SampleCache? = nil) throws(TraceError) -> [Sample] {
        let dir = try kvmDirectory()
        // KVM's directory lists its global statistics files too (sixty and more), besides a `PID-FD` one a VM.
        let entries = (directoryEntries(dir) ?? []).compactMap { e in vmDirectoryPID(e).map { (name: e, pid: $0) } }
            .sorted { $0.name < $1.name }
        // The VMMs' threads are followed for conversions from this sample on (a VM new since the last one is traced
        // from now: its map knows the pages it converts from here).
        traced?.follow(Set(entries.map(\.pid)))
        traced?.update()
        let now = HostClock.monotonicNs()
        var out: [Sample] = []
        for (e, pid) in entries {
            let path = dir + "/" + e
            var vm: SampleCache.VM
            if let known = cache?.vms[e] {
                // Its process has ended: the VM lives on only for the statistics files held here. Let them go (the
                // VM with them) and show it no more.
                if known.process?.hasExited ?? false { cache?.vms[e] = nil; continue }
                vm = known
            } else {
                vm = SampleCache.VM(pid: pid, process: ProcessHandle(pid: pid))
            }
            if vm.scannedNs == nil || now &- vm.scannedNs! >= SampleCache.rescanNs {
                vm.rescan(debugfs: path, now: now)
            }
            // The vCPUs' binary statistics, summed (what debugfs's VM directory shows, and readable under lockdown);
            // debugfs's own files where those cannot be had.
            var stats: [String: UInt64] = [:]
            if !vm.statsFiles.isEmpty, let sums = vm.readStatistics() {
                stats = sums
            } else if !vm.statsFiles.isEmpty {
                vm.scannedNs = nil  // a file stopped answering: found again next time
            }
            var missing: String?
            if stats.isEmpty {
                for s in shownStats where vm.files.contains(s) {
                    if let t = readPseudoFile(path + "/" + s), let v = UInt64(t.trimmingCharacters(in: .whitespacesAndNewlines)) {
                        stats[s] = v
                    }
                }
                if stats.isEmpty { missing = Self.whyNoCounters(path + "/" + Stat.exits) }
            }
            if let traced {
                stats[Stat.tracedUserspaceExits] = traced.userspaceExits(pid)
                stats[Stat.tracedMMIO] = traced.mmio(pid)
                stats[Stat.tracedMemoryFaults] = traced.userspaceExits(pid, reason: .memoryFault)
                if let bytes = traced.privateBytes(pid) { stats[Stat.tracedPrivateBytes] = bytes }
            }
            var sample = Sample(pid: pid, directory: e, name: vm.name, vcpus: vm.vcpus, stats: stats,
                                rssBytes: residentBytes(pid: pid), countersMissing: missing)
            sample.libvirt = vm.libvirt
            sample.command = vm.command
            sample.controlSocket = vm.controlSocket
            out.append(sample)
            cache?.vms[e] = vm
        }
        if let cache, cache.vms.count > out.count {
            let shown = Set(out.map(\.directory))
            cache.vms = cache.vms.filter { shown.contains($0.key) }
        }
        return out
    }

    /// What `sample` keeps of each VM from one sample to the next (`top` and the exporter sample every second): its
    /// process's name, libvirt domain, debugfs listing and vCPU statistics files, found again every `rescanNs`, so
    /// that a sample in between reads only the numbers: one pread a vCPU. Finding them every time (each descriptor
    /// in /proc/PID/fd read, each statistics file duplicated and its hundred descriptors decoded, the process's name
    /// and command line read) was four fifths of a sample's instructions besides the traced events, beside vmscope's
    /// VMM and a QEMU on this project's host (callgrind: 1.47 M → 0.33 M). The files held keep their VM alive, so a
    /// VM whose process has ended (its pidfd says so) is dropped at the next sample, files and all; one no longer
    /// listed, too. The files are duplicated through that pidfd, so they are that process's, whatever PID reuse.
    public final class SampleCache: @unchecked Sendable {
        /// How often a VM's files, name and domain are found again (a vCPU added, QEMU opening its statistics files
        /// for `query-stats`, a process renamed).
        public static let rescanNs: UInt64 = 5_000_000_000

        struct VM {
            let pid: Int32
            /// Nil when the process was gone (or no pidfd could be had): then no statistics file is kept.
            let process: ProcessHandle?
            var scannedNs: UInt64?
            var files: [String] = []
            var vcpus = 0
            var name = ""
            var command = ""
            var controlSocket: String?
            var libvirt: LibvirtIdentity?
            /// Each statistics file, and where each shown statistic stands in its words.
            var statsFiles: [(file: BinaryStats, words: [(name: String, index: Int)])] = []

            init(pid: Int32, process: ProcessHandle?) {
                self.pid = pid
                self.process = process
            }

            mutating func rescan(debugfs path: String, now: UInt64) {
                files = directoryEntries(path) ?? []
                vcpus = files.reduce(0) { $0 + (HostVMs.isVCPUDirectory($1) ? 1 : 0) }
                // The command line read once for the name, the socket and the domain.
                let cmdline = readPseudoFile("/proc/\(pid)/cmdline"), comm = HostProcess.command(pid: pid)
                name = HostProcess.name(pid: pid, cmdline: cmdline, command: comm)
                command = comm ?? ""
                controlSocket = HostVMs.controlSocket(cmdline: cmdline)
                libvirt = HostProcess.libvirtDomain(pid: pid, cmdline: cmdline).map { LibvirtIdentity(name: $0.name, uuid: $0.uuid) }
                statsFiles = (process.map(HostVMs.vcpuStatisticsFiles) ?? []).map { f in
                    (f, HostVMs.shownStats.compactMap { s in f.wordIndex(of: s).map { (s, $0) } })
                }
                scannedNs = now
            }

            /// The shown statistics summed over the files; nil if one cannot be read.
            func readStatistics() -> [String: UInt64]? {
                var sums: [String: UInt64] = [:]
                for (file, words) in statsFiles {
                    guard let values = try? file.readWords() else { return nil }
                    for (name, i) in words where i < values.count { sums[name, default: 0] &+= values[i] }
                }
                return sums
            }
        }

        var vms: [String: VM] = [:]

        public init() {}

        /// The VMs kept for (their debugfs directories' names).
        public var kept: [String] { vms.keys.sorted() }
    }

    /// The process of a VM's directory in KVM's debugfs (`PID-FD`, both decimal), read as bytes: nil for any other
    /// name (the directory's statistics files). Splitting every name a Character at a time was a fifth of a sample.
    static func vmDirectoryPID(_ name: String) -> Int32? {
        var pid: Int64 = 0, digits = 0, fdDigits = 0, dash = false
        for b in name.utf8 {
            if b == 0x2D, !dash, digits > 0 { dash = true; continue }
            guard b >= 0x30, b <= 0x39 else { return nil }
            if dash {
                fdDigits += 1
                if fdDigits > 10 { return nil }
            } else {
                digits += 1
                pid = pid * 10 + Int64(b - 0x30)
                if digits > 10 { return nil }
            }
        }
        guard dash, fdDigits > 0, pid <= Int64(Int32.max) else { return nil }
        return Int32(pid)
    }

    /// Whether a name in a VM's debugfs directory is a vCPU's (`vcpu` and a number), read as bytes: a VM's directory
    /// lists a hundred files or more, and reading each name a Character at a time was a sixth of `top`'s sample.
    static func isVCPUDirectory(_ name: String) -> Bool {
        let u = name.utf8
        guard u.count > 4, u.starts(with: "vcpu".utf8) else { return false }
        return u.dropFirst(4).allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    /// Why a VM has no counters: the process holds no vCPU statistics descriptor (QEMU opens them only for
    /// `query-stats`), and debugfs's file for it (`exits`) cannot be read, with the kernel's reason (under
    /// lockdown or this host's PVM, reading it gives EPERM though it is listed).
    static func whyNoCounters(_ debugfsFile: String) -> String {
        let lead = "KVM's counters unreadable: no vCPU statistics descriptor in the process (QEMU opens them for query-stats), and debugfs"
        let fd = open(debugfsFile, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "\(lead) refuses it: \(String(cString: strerror(errno))) (\(debugfsFile))" }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: 64)
        let n = b.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return n < 0 ? "\(lead) refuses reads: \(String(cString: strerror(errno)))" : "\(lead) has no number in \(debugfsFile)"
    }

    /// The vCPU statistics files `pid` holds (`anon_inode:kvm-vcpu-stats:N` in /proc/PID/fd: vmscope's VMM and QEMU
    /// open one per vCPU), duplicated into this process.
    static func vcpuStatisticsFiles(of process: ProcessHandle) -> [BinaryStats] {
        let dir = "/proc/\(process.pid)/fd"
        var files: [BinaryStats] = []
        for entry in directoryEntries(dir) ?? [] {
            guard let fd = Int32(entry), let target = symbolicLinkTarget(dir + "/" + entry),
                  target.hasPrefix("anon_inode:kvm-vcpu-stats:"), let stats = try? BinaryStats.ofProcess(process, fd: fd) else { continue }
            files.append(stats)
        }
        return files
    }

    /// One row of `top`: a VM's counters and their rates over the interval between two samples.
    public struct Row: Sendable, Equatable {
        public var sample: Sample
        public var intervalNs: UInt64
        public var perSecond: [String: Double]
        /// The exit reasons with the highest rates (the `*_exits` counters), highest first.
        public var topExits: [(String, Double)] {
            perSecond.filter { $0.key.hasSuffix("_exits") && !$0.key.hasPrefix("traced_") && $0.value > 0 }.sorted { $0.value > $1.value }.prefix(3).map { ($0.key, $0.value) }
        }
        public var exitsPerSecond: Double? { perSecond[Stat.exits] }

        public static func == (a: Row, b: Row) -> Bool { a.sample == b.sample && a.perSecond == b.perSecond }

        public var json: JSON {
            let s = sample
            return .object([
                ("pid", .i(Int(s.pid))), ("vm", .string(s.directory)), ("name", .string(s.name)),
                ("libvirt", .opt(s.libvirt.map { .object([("name", .string($0.name)), ("uuid", .string($0.uuid))]) })), ("vcpus", .i(s.vcpus)),
                ("rss-bytes", .opt(s.rssBytes.map(JSON.u))),
                ("counters", .object(s.stats.sorted { $0.key < $1.key }.map { ($0.key, .u($0.value)) })),
                ("per-second", .object(perSecond.sorted { $0.key < $1.key }.map { ($0.key, .number(String(format: "%.1f", $0.value))) })),
                ("top-exits", .array(topExits.map { .string($0.0) })),
            ])
        }
    }

    /// Rows from two samples `intervalNs` apart (a VM in only the second has no rates yet).
    public static func rows(before: [Sample], after: [Sample], intervalNs: UInt64) -> [Row] {
        after.map { s in
            let old = before.first { $0.directory == s.directory }
            var rates: [String: Double] = [:]
            if let old, intervalNs > 0 {
                for (k, v) in s.stats {
                    let o = old.stats[k] ?? 0
                    rates[k] = v >= o ? Double(v - o) / (Double(intervalNs) / 1e9) : 0
                }
            }
            return Row(sample: s, intervalNs: intervalNs, perSecond: rates)
        }
    }
}

/// A debugfs or procfs file's text: they report size 0, so it is read until EOF (at most `maxBytes`, 64 KiB unless
/// asked), not by its size.
public func readPseudoFile(_ path: String, maxBytes: Int = 65536) -> String? {
    readPseudoFileBytes(path, maxBytes: maxBytes).map { String(decoding: $0, as: UTF8.self) }
}

/// The same, as bytes. Read through a 4 KiB buffer that is not cleared first (most of these files are a line or
/// two, and `top` reads several for every VM each second: a cleared 64 KiB buffer a read was a visible part of it).
public func readPseudoFileBytes(_ path: String, maxBytes: Int = 65536) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { buf in
        while out.count < maxBytes {
            let n = read(fd, buf.baseAddress, min(buf.count, maxBytes - out.count))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[0..<n]))
        }
    }
    return out
}

/// The names in a directory (not `.` and `..`), read with readdir: nil when it cannot be opened. What `top` lists each
/// second (/proc/PID/fd, KVM's debugfs), without Foundation's directory enumeration and its per-entry work.
public func directoryEntries(_ path: String) -> [String]? {
    guard let dir = opendir(path) else { return nil }
    defer { closedir(dir) }
    var out: [String] = []
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { out.append(name) }
    }
    return out
}

/// Where a symbolic link points (/proc/PID/fd/N: `anon_inode:kvm-vcpu-stats:0`, ...), with readlink; nil when it is
/// not a link or cannot be read.
public func symbolicLinkTarget(_ path: String) -> String? {
    withUnsafeTemporaryAllocation(of: CChar.self, capacity: 4096) { buf in
        let n = readlink(path, buf.baseAddress!, buf.count)
        guard n > 0 else { return nil }
        return String(decoding: UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: buf[0..<n])), as: UTF8.self)
    }
}
