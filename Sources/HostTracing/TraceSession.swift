import CTraceFS
import Foundation
import Synchronization
import KVM
import Schema

/// Why tracing cannot start, in words naming the fix.
public struct TraceError: Error, Sendable, CustomStringConvertible {
    public var description: String
    /// The errno of the call that failed (opening tracefs, writing a control file, reading a file); nil for a refusal
    /// of vmscope's own (a malformed raw file, an event the kernel lacks).
    public var errno: Errno?
    public init(_ d: String) { description = d }
    /// `before` (the C library's text for `errno`) `after`: the errno kept beside the words.
    public init(_ before: String, errno e: Int32, _ after: String = "") {
        description = before + " (" + String(cString: strerror(e)) + ")" + after
        errno = Errno(rawValue: e)
    }
}

/// libtracefs and libtraceevent, loaded when tracing first starts (the build needs neither -dev package).
public enum TraceLibraries {
    /// The Debian packages that hold them.
    public static let packages = "libtracefs1 libtraceevent1"

    /// The loaded functions, or one line saying what to install.
    public static func api() throws(TraceError) -> ctracefs_api {
        var error = [CChar](repeating: 0, count: 512)
        guard let api = ctracefs_load(&error, error.count) else {
            let why = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            // What to install first: a status line at 80 columns cut the package names off behind dlerror's words.
            throw TraceError("tracing needs apt-get install \(packages) (libtracefs and libtraceevent: \(why))")
        }
        return api.pointee
    }
}

/// A private tracefs instance (`instances/vmscope-PID`) with KVM's events enabled for one process's threads, read
/// from its per-CPU raw buffers through libtracefs. Global tracing state is never touched: everything is in the
/// instance, which `close()` (and `deinit`) removes; the next session removes instances whose owner is dead.
public final class TraceSession: @unchecked Sendable {
    private static let sessionsStarted = Atomic<Int>(0)
    // @unchecked: one thread uses a session at a time (the inspector's loop, or `vmscope trace`).
    /// The process traced; nil: every process (`vmscope top`'s counters), no thread filter.
    public let target: Int32?
    public var pid: Int32 { target ?? 0 }
    public let name: String
    public private(set) var layouts: EventLayouts
    private var instance: OpaquePointer?
    /// Each CPU's buffer, open for the session (nil where the libraries are too old: then every read opens them).
    private var cpuReaders: CPUReaders?
    /// Whether reads keep each CPU's buffer open (libtracefs 1.6's per-CPU readers) rather than opening them anew.
    public var readsKeepBuffersOpen: Bool { cpuReaders != nil }
    private let tep: OpaquePointer
    private let fs: ctracefs_api
    /// What the kernel pairs for this session (`KernelPairing`).
    private var kernelPairings: [KernelPairing] = []
    /// What the kernel pairs, in words; nil where it pairs nothing.
    public private(set) var kernelPairing: String?
    /// Why the kernel pairs nothing, or not all it was asked to, where it was asked to.
    public private(set) var kernelPairingRefused: String?
    public var faultsPairedInKernel: Bool { kernelPairings.contains { $0.spec.layoutName == EventLayouts.kernelPairedFault } }
    /// Threads of `pid` as last listed.
    public private(set) var threads: Set<Int32> = []
    /// Whether the kernel follows the process's threads itself (`set_event_pid` with `options/event-fork`): a thread
    /// the VMM starts (a vCPU) is traced from its first event, not from the next rescan of /proc. Where the instance
    /// lacks those files, each event's filter lists the threads, rewritten every second.
    public private(set) var followsForks = false
    private var lastThreadScan: UInt64 = 0
    /// Events the kernel dropped before we read them (`missed_events`), and events from other threads discarded.
    public private(set) var missed: UInt64 = 0
    /// Whether the kernel lost events without counting them (a page that says events were lost but had no room for
    /// their number: -1), each such page counted in `missed` as one: `missed` is then a lower bound.
    public private(set) var missedUncounted = false
    public private(set) var foreign: UInt64 = 0
    public private(set) var decoded: UInt64 = 0
    /// Events the kernel dropped since `seen` (a reader's own mark, moved up to `missed`): each reader of a session
    /// (the traced map of `trace`, the inspector's, `top`'s) forgets what it knew when this is not 0.
    public func missedSince(_ seen: inout UInt64) -> UInt64 {
        defer { seen = missed }
        return missed > seen ? missed - seen : 0
    }

    /// Reads made (each a pass over every CPU's buffer): what a tracer's pacing is judged by.
    public private(set) var reads: UInt64 = 0
    /// When set, `read` also keeps each admitted record's bytes (`takeRaw()`), for `--save-raw`.
    public var keepRaw = false
    private var raw: [RawTraceRecord] = []
    /// Whether the instance's timestamps are CLOCK_MONOTONIC's (`trace_clock` took "mono"): then `read` can tell
    /// which events no other CPU can still precede (`TimeOrderedRelease`).
    private var onMonotonicClock = false
    private var release = TimeOrderedRelease()
    /// Events given out after a newer one had been (written later than the hold-back allowed for), and the most one
    /// came after (the hold-back grows to twice that: `TimeOrderedRelease.currentHoldBackNs`).
    public var lateEvents: UInt64 { release.late }
    public var worstLatenessNs: UInt64 { release.worstLatenessNs }

    /// The raw records kept since the last call (with `keepRaw`), and the layouts to decode them with.
    public func takeRaw() -> [RawTraceRecord] { defer { raw = [] }; return raw }

    /// Where tracefs is mounted when nothing else says: the kernel's own mount point for it.
    public static let standardTracingDirectory = "/sys/kernel/tracing"
    /// Whether libtracefs was pointed at `standardTracingDirectory` (`tracingDirectory`).
    private static let pointedAtStandard = Atomic<Bool>(false)

    /// The tracefs mount point, with a writable `instances`: the one libtracefs finds (mounting
    /// `/sys/kernel/tracing` when there is none); where that one is read-only (a machine whose only tracefs is
    /// debugfs' `tracing`, mounted ro), `/sys/kernel/tracing`, mounted here if nothing is, and libtracefs pointed at
    /// it. One line naming the fix otherwise.
    public static func tracingDirectory() throws(TraceError) -> String {
        let fs = try TraceLibraries.api()
        let standard = standardTracingDirectory
        // Pointed there once already: libtracefs keeps it (and its own search still finds the read-only one first).
        if pointedAtStandard.load(ordering: .acquiring), access(standard + "/instances", W_OK) == 0 { return standard }
        var path: UnsafePointer<CChar>?
        let found = fs.tracefs_tracing_dir_is_mounted(true, &path) >= 0 ? path.map { String(cString: $0) } : nil
        let foundErrno = errno
        if let found, access(found + "/instances", W_OK) == 0 { return found }
        let unwritable = errno
        if found != standard, getuid() == 0 {
            // Mounted there already when it holds tracefs' files (unmounted, sysfs leaves the directory empty).
            let mounted = access(standard + "/instances", F_OK) == 0
            let mountErrno = mounted ? 0 : (mount("nodev", standard, "tracefs", 0, nil) == 0 ? 0 : errno)
            if mountErrno == 0, access(standard + "/instances", W_OK) == 0 {
                // libtracefs creates and lists instances where it looks itself: the first tracefs in /proc/mounts.
                guard let point = fs.tracefs_set_tracing_dir else {
                    throw TraceError("\(found ?? "tracefs")/instances is read-only and this libtracefs cannot be pointed at \(standard) (tracefs_set_tracing_dir: libtracefs 1.3 or later)")
                }
                // strdup: libtracefs keeps the pointer it is given (once a process, `pointedAtStandard`).
                guard point(strdup(standard)) == 0 else { throw TraceError("cannot point libtracefs at \(standard)", errno: errno) }
                pointedAtStandard.store(true, ordering: .releasing)
                return standard
            }
            if let found, mountErrno != 0 {
                throw TraceError("\(found)/instances is not writable (\(String(cString: strerror(unwritable)))) and \(standard) could not be mounted",
                                 errno: mountErrno, ": mount -t tracefs nodev \(standard)")
            }
        }
        guard let found else {
            throw TraceError("tracefs is not mounted and could not be", errno: foundErrno, ": run as root, or mount -t tracefs nodev \(standard)")
        }
        throw TraceError("\(found)/instances is not writable", errno: unwritable, ": tracing needs root (or write access to tracefs)")
    }

    /// A libtraceevent handle with the ring buffer's page header and the formats of `events` only (those this
    /// kernel lacks are left out): `tracefs_local_events` would parse every event of every system, and read
    /// /proc/kallsyms, the printk formats and the saved command lines besides (most of `top --once`'s CPU, and
    /// seconds of it in the lab's emulated CPUs).
    static func eventFormats(_ fs: ctracefs_api, dir: String, events: [(group: String, name: String)]) throws(TraceError) -> OpaquePointer {
        guard let tep = fs.tep_alloc() else { throw TraceError("cannot allocate a libtraceevent handle", errno: errno) }
        func contents(_ path: String) -> [CChar]? {
            guard let d = FileManager.default.contents(atPath: path), !d.isEmpty else { return nil }
            return d.map { CChar(bitPattern: $0) } + [0]
        }
        guard var header = contents(dir + "/events/header_page"),
              fs.tep_parse_header_page(tep, &header, UInt(header.count - 1), Int32(MemoryLayout<Int>.size)) == 0 else {
            fs.tep_free(tep)
            throw TraceError("cannot read \(dir)/events/header_page", errno: errno)
        }
        for (group, name) in events {
            guard let format = contents("\(dir)/events/\(group)/\(name)/format") else { continue }
            _ = format.withUnsafeBufferPointer { fs.tep_parse_event(tep, $0.baseAddress, UInt($0.count - 1), group) }
        }
        return tep
    }

    /// One event's id and fields as the handle parsed them.
    static func layout(_ fs: ctracefs_api, _ tep: OpaquePointer, _ group: String, _ event: String) -> EventLayouts.Event? {
        guard let e = fs.tep_find_event_by_name(tep, group, event) else { return nil }
        var fields: [String: EventLayouts.Field] = [:]
        var f = e.pointee.fields
        while let field = f {
            fields[String(cString: field.pointee.name)] = .init(offset: Int(field.pointee.offset), size: Int(field.pointee.size))
            f = field.pointee.next
        }
        return .init(id: Int(e.pointee.id), fields: fields)
    }

    /// One field's C type as the handle parsed it from the event's format (`unsigned int` for `vcpu_id`).
    static func fieldType(_ fs: ctracefs_api, _ tep: OpaquePointer, _ group: String, _ event: String, _ field: String) -> String? {
        guard let e = fs.tep_find_event_by_name(tep, group, event) else { return nil }
        var f = e.pointee.fields
        while let this = f {
            if String(cString: this.pointee.name) == field { return this.pointee.type.map { String(cString: $0) } }
            f = this.pointee.next
        }
        return nil
    }

    /// Removes `vmscope-N` instances whose process N is gone (a session killed before it could clean up), then their
    /// synthetic events (`KernelPairing`).
    @discardableResult
    public static func removeStaleInstances() -> [String] {
        guard let fs = try? TraceLibraries.api(), let list = fs.tracefs_instances("^vmscope-") else { return [] }
        let dir = try? tracingDirectory()
        defer {
            fs.tracefs_list_free(list)
            if let dir { KernelPairing.removeStale(tracingDirectory: dir) }
        }
        var removed: [String] = []
        var i = 0
        while let p = list[i] {
            let name = String(cString: p)
            i += 1
            guard let owner = Int32(name.dropFirst("vmscope-".count).prefix { $0 != "-" }), kill(owner, 0) != 0, errno == ESRCH else { continue }
            // Its kernel pairing's triggers first (they hold the instance): named as `init` named them.
            if let dir {
                for spec in KernelPairing.all { KernelPairing(spec, sessionInstance: name, tracingDirectory: dir).removeTriggers() }
            }
            if let inst = fs.tracefs_instance_alloc(nil, name) {
                if fs.tracefs_instance_destroy(inst) == 0 { removed.append(name) }
                fs.tracefs_instance_free(inst)
            }
        }
        return removed
    }

    /// Each CPU's buffer in the session's instance, KiB: by default, and what `bufferKiB` may ask.
    public static let defaultBufferKiB = 4096
    public static let bufferKiBRange = 16...262_144

    /// What the kernel may pair for a session (`KernelPairing`), where it can.
    public struct KernelPairs: OptionSet, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Each MEMORY_FAULT exit with the page fault before it: `kvm_page_fault` is then not read (for a reader that
        /// uses page faults only for this pairing).
        public static let memoryFaults = KernelPairs(rawValue: 1)
        /// Each `KVM_SET_MEMORY_ATTRIBUTES` with its result: the other ioctls' `sys_exit_ioctl` (every `KVM_RUN`'s
        /// return among them) are then not read, and the pairing is the same (the inspector's views).
        public static let ioctlResults = KernelPairs(rawValue: 2)
        public static let all: KernelPairs = [.memoryFaults, .ioctlResults]
    }

    /// Traces `pid`'s threads: `events` among `EventLayouts.decoded` (all by default), each CPU's buffer `bufferKiB`.
    /// `pairInKernel`: what the kernel pairs where it can (`KernelPairing`), its events not read.
    public init(pid: Int32?, events: [String]? = nil, bufferKiB: Int = defaultBufferKiB, pairInKernel: KernelPairs = []) throws(TraceError) {
        // The libraries first: where they are missing, that is the one thing to say.
        fs = try TraceLibraries.api()
        guard Self.bufferKiBRange.contains(bufferKiB) else {
            throw TraceError("each CPU's buffer can be \(Self.bufferKiBRange.lowerBound) to \(Self.bufferKiBRange.upperBound) KiB, not \(bufferKiB)")
        }
        if let pid { guard kill(pid, 0) == 0 || errno == EPERM else { throw TraceError("no process \(pid)") } }
        self.target = pid
        let dir = try Self.tracingDirectory()
        Self.removeStaleInstances()
        // The process's first session is vmscope-PID, a second at the same time vmscope-PID-2, ...
        let n = Self.sessionsStarted.add(1, ordering: .relaxed).newValue
        name = n == 1 ? "vmscope-\(getpid())" : "vmscope-\(getpid())-\(n)"
        let tep = try Self.eventFormats(fs, dir: dir, events: EventLayouts.decoded.filter { events?.contains($0.name) ?? true })
        self.tep = tep
        var found: [String: EventLayouts.Event] = [:]
        for (group, event) in EventLayouts.decoded where events?.contains(event) ?? true {
            guard let e = Self.layout(fs, tep, group, event) else { continue }
            found[event] = e
        }
        // The ioctl events pair traced conversions with their results: without the conversion event they are
        // only volume (every KVM_RUN returns through sys_exit_ioctl). Every process's (`top`) would be far more: there
        // they start filtered to no thread, and `pairConversions(ofThreadsOf:)` names the VMMs' threads.
        if found["kvm_vm_set_mem_attributes"] == nil {
            for name in EventLayouts.conversionPairing { found[name] = nil }
        }
        guard !found.isEmpty else {
            fs.tep_free(tep)
            throw TraceError("this kernel has none of the KVM events asked for (\(dir)/events/kvm): is the kvm module loaded?")
        }
        layouts = EventLayouts(events: found)
        guard let inst = fs.tracefs_instance_create(name) else {
            let e = errno
            fs.tep_free(tep)
            throw TraceError("cannot create the tracefs instance \(name)", errno: e)
        }
        instance = inst
        guard fs.tracefs_instance_set_buffer_size(inst, bufferKiB, -1) == 0 else {
            let e = errno
            close()
            throw TraceError("cannot give each CPU's buffer in \(name) \(bufferKiB) KiB", errno: e)
        }
        // Timestamps on CLOCK_MONOTONIC, the clock of fault records and of the views (this instance only).
        onMonotonicClock = fs.tracefs_instance_file_write(inst, "trace_clock", "mono") > 0
        if let pid {
            let tids = Self.tasks(of: pid)
            followsForks = !tids.isEmpty && fs.tracefs_instance_file_write(inst, "options/event-fork", "1") > 0
                && fs.tracefs_instance_file_write(inst, "set_event_pid", tids.sorted().map(String.init).joined(separator: " ")) > 0
        }
        refreshThreads(force: true)
        // Only where the kernel follows the threads itself: otherwise every event is filtered by thread, and a filtered
        // exit is built aside and written after its trigger's paired fault (`MemoryFaultPairing` expects it before).
        // Every process's session (`top`) filters no exit by thread: its triggers see every thread's.
        if !pairInKernel.isEmpty, target != nil, !followsForks {
            kernelPairingRefused = "this kernel cannot follow the process's threads (set_event_pid with options/event-fork)"
        } else if !pairInKernel.isEmpty {
            var said: [String] = []
            for spec in KernelPairing.all where pairInKernel.contains(spec.option) && found[spec.first.event] != nil && found[spec.second.event] != nil {
                do throws(TraceError) {
                    let k = try KernelPairing.install(spec, sessionInstance: name, tracingDirectory: dir) { group, event, field in
                        Self.fieldType(fs, tep, group, event, field)
                    }
                    kernelPairings.append(k)
                    guard let format = FileManager.default.contents(atPath: k.formatPath).map({ $0.map { CChar(bitPattern: $0) } + [0] }),
                          format.withUnsafeBufferPointer({ fs.tep_parse_event(tep, $0.baseAddress, UInt($0.count - 1), "synthetic") }) == 0,
                          let e = Self.layout(fs, tep, "synthetic", k.name) else {
                        throw TraceError("cannot read the format of \(k.formatPath)")
                    }
                    guard fs.tracefs_event_enable(inst, "synthetic", k.name) == 0 else {
                        throw TraceError("cannot enable synthetic/\(k.name) in \(name)", errno: errno)
                    }
                    found[spec.replaces] = nil
                    found[spec.layoutName] = e
                    said.append(spec.replaces)
                } catch {
                    if let k = kernelPairings.last, k.spec.prefix == spec.prefix {
                        k.removeTriggers()
                        k.removeEvent()
                        kernelPairings.removeLast()
                    }
                    kernelPairingRefused = error.description
                }
            }
            layouts = EventLayouts(events: found)
            if !said.isEmpty {
                kernelPairing = "paired in the kernel (hist triggers, synthetic events \(kernelPairings.map(\.name).joined(separator: ", "))): "
                    + said.map { $0 == "kvm_page_fault" ? "memory faults with their page faults (kvm_page_fault is not read)"
                        : "conversions with their ioctl's result (other ioctls' sys_exit_ioctl is not read)" }.joined(separator: ", ")
            }
        }
        // Filtered to no thread until the VMMs are named: the events the kernel does not pair (a paired event's own
        // filter is not touched).
        if pid == nil { writePairingFilter(threads: []) }
        for (group, event) in EventLayouts.decoded where found[event] != nil {
            if fs.tracefs_event_enable(inst, group, event) != 0 {
                let e = errno
                close()
                throw TraceError("cannot enable \(group)/\(event) in \(name)", errno: e)
            }
        }
        _ = fs.tracefs_trace_on(inst)
        cpuReaders = CPUReaders(fs, inst)
    }

    deinit { close() }

    /// Removes the instance (its buffers, enabled events and triggers go with it), then the kernel pairing's synthetic event.
    public func close() {
        cpuReaders?.close()
        cpuReaders = nil
        for k in kernelPairings { k.removeTriggers() }
        if let inst = instance {
            _ = fs.tracefs_instance_destroy(inst)
            fs.tracefs_instance_free(inst)
            instance = nil
        }
        for k in kernelPairings { k.removeEvent() }
        kernelPairings = []
    }

    public var isOpen: Bool { instance != nil }

    /// The threads of `pid` now (a VMM starts vCPU threads after the VM): the kernel filter follows them.
    public func refreshThreads(force: Bool = false) {
        let now = DispatchTime.now().uptimeNanoseconds
        guard target != nil, force || now &- lastThreadScan > 1_000_000_000, let inst = instance else { return }
        lastThreadScan = now
        let tids = Self.tasks(of: pid)
        let first = threads.isEmpty
        guard tids != threads, !tids.isEmpty else { return }
        threads = tids
        let ioctl = Self.pairedIoctls
        if followsForks {
            if first, layouts.events["sys_enter_ioctl"] != nil { _ = fs.tracefs_event_file_write(inst, "syscalls", "sys_enter_ioctl", "filter", ioctl) }
            return
        }
        let filter = tids.sorted().map { "common_pid == \($0)" }.joined(separator: " || ")
        for (group, event) in EventLayouts.decoded where layouts.events[event] != nil {
            _ = fs.tracefs_event_file_write(inst, group, event, "filter", event == "sys_enter_ioctl" ? "(\(filter)) && \(ioctl)" : filter)
        }
    }

    /// The ioctls asked for on the way in: the conversion, and a vCPU going back into the guest (a conversion's last
    /// step ends there).
    static let pairedIoctls = "(cmd == \(KVMIoctl.setMemoryAttributes.value) || cmd == \(KVMIoctl.run.value))"
    /// At most this many threads in a system-wide session's pairing filter (a filter is one line the kernel parses).
    public static let pairingThreadLimit = 256
    private var pairingThreads: Set<Int32> = []

    /// A system-wide session (`top`, the exporter): the ioctl events, which would otherwise fire for every ioctl of
    /// every process, are kept for the threads of `pids` only (the VMMs), at most `pairingThreadLimit` of them
    /// (lowest first); returns how many threads were left out. Rewritten only when the threads changed.
    @discardableResult
    public func pairConversions(ofThreadsOf pids: Set<Int32>) -> Int {
        guard target == nil, TracePairing.tracesConversions(layouts) else { return 0 }
        let all = pids.reduce(into: Set<Int32>()) { $0.formUnion(Self.tasks(of: $1)) }
        let kept = Set(all.sorted().prefix(Self.pairingThreadLimit))
        if kept != pairingThreads { writePairingFilter(threads: kept) }
        return all.count - kept.count
    }

    private func writePairingFilter(threads: Set<Int32>) {
        guard let inst = instance else { return }
        pairingThreads = threads
        // No thread yet: a pid no task has (0 is the idle task, which makes no system call).
        let who = threads.isEmpty ? "common_pid == 0" : threads.sorted().map { "common_pid == \($0)" }.joined(separator: " || ")
        for name in EventLayouts.conversionPairing where layouts.events[name] != nil {
            _ = fs.tracefs_event_file_write(inst, "syscalls", name, "filter", name == "sys_enter_ioctl" ? "(\(who)) && \(Self.pairedIoctls)" : who)
        }
    }

    /// `events` (and their raw records, kept beside them) sorted by timestamp, stably.
    static func inTimeOrder(_ events: [TraceEvent], raw: [RawTraceRecord]?) -> ([TraceEvent], [RawTraceRecord]?) {
        guard let order = timeOrder(events) else { return (events, raw) }
        return (order.map { events[$0] }, raw.map { r in order.map { r[$0] } })
    }

    /// The indices of `events` by time, events of one time in the order given (nil: they are in order already): the
    /// runs already in order (one per CPU's buffer, as a read gives them) merged pairwise, linear in the events for a
    /// few CPUs, where sorting the indices compared each event log₂(n) times.
    static func timeOrder(_ events: [TraceEvent]) -> [Int]? {
        events.withUnsafeBufferPointer { b in
            var bounds = [0]
            for i in b.indices.dropFirst() where b[i - 1].timeNs > b[i].timeNs { bounds.append(i) }
            guard bounds.count > 1 else { return nil }
            bounds.append(b.count)
            var order = Array(b.indices), merged = order
            while bounds.count > 2 {
                var next = [0]
                var r = 0
                while r + 1 < bounds.count {
                    // [lo, mid) and [mid, hi), each in order; a run without a partner is copied as it is.
                    let lo = bounds[r], mid = bounds[r + 1], hi = r + 2 < bounds.count ? bounds[r + 2] : bounds[r + 1]
                    var i = lo, j = mid, k = lo
                    while i < mid && j < hi {
                        // Strictly earlier from the right only: of equal times the left run's (given first) goes first.
                        if b[order[j]].timeNs < b[order[i]].timeNs { merged[k] = order[j]; j += 1 } else { merged[k] = order[i]; i += 1 }
                        k += 1
                    }
                    while i < mid { merged[k] = order[i]; i += 1; k += 1 }
                    while j < hi { merged[k] = order[j]; j += 1; k += 1 }
                    next.append(hi)
                    r += 2
                }
                swap(&order, &merged)
                bounds = next
            }
            return order
        }
    }

    static func tasks(of pid: Int32) -> Set<Int32> {
        // readdir, not FileManager: `top` lists its VMMs' threads each pass.
        Set((directoryEntries("/proc/\(pid)/task") ?? []).compactMap { Int32($0) })
    }

    /// A thread the kernel traced that the last scan did not list: the process's (started since), or not.
    private func admit(_ tid: Int32) -> Bool {
        guard let pid = target, access("/proc/\(pid)/task/\(tid)", F_OK) == 0 else { return false }
        threads.insert(tid)
        return true
    }

    /// Events the last read gave (what the next one makes room for).
    private var lastReadCount = 0

    /// Whatever the buffers hold now, decoded, oldest first (merged across CPUs by timestamp), up to `holdBackNs`
    /// before the read began (the rest is given out by a later read, in order, or by a `final` one: the traced
    /// process has gone and nothing newer can come). Events of other threads (a filter not yet updated) are dropped
    /// and counted in `foreign`. At most about `limit` events: the page being read when it is reached is read to
    /// its end (with the per-CPU readers).
    public func read(limit: Int = 1 << 20, final: Bool = false) -> [TraceEvent] {
        guard let inst = instance else { return [] }
        refreshThreads()
        let startedNs = HostClock.monotonicNs()
        reads &+= 1
        // One read at a time uses it, on this thread: its members need no run-time exclusivity checks (they were a
        // sixth of a read's instructions an event).
        final class Box {
            @exclusivity(unchecked) var out: [TraceEvent] = []
            @exclusivity(unchecked) var missed: UInt64 = 0
            @exclusivity(unchecked) var uncounted = false
            /// Events a page (or a record) says were lost before it: a number, or -1 for some the kernel did not count.
            func lost(_ n: Int) {
                if n > 0 { missed &+= UInt64(n) } else if n < 0 { missed &+= 1; uncounted = true }
            }
            @exclusivity(unchecked) var foreign: UInt64 = 0
            @exclusivity(unchecked) var raw: [RawTraceRecord]?
            /// Where in `out` the events of threads the last scan did not list stand (kept in order, in case the
            /// thread is the process's, started since).
            @exclusivity(unchecked) var strangers: [Int] = []
            @exclusivity(unchecked) var followsForks = false
            @exclusivity(unchecked) var lastTid: Int32?
            @exclusivity(unchecked) var lastKnown = false
            let layouts: EventLayouts
            let threads: Set<Int32>?
            let limit: Int
            init(_ l: EventLayouts, _ t: Set<Int32>?, _ limit: Int) { layouts = l; threads = t; self.limit = limit }
            /// One record: decoded and kept, or counted; true once `limit` events are kept.
            func take(_ bytes: UnsafeRawBufferPointer, cpu: Int32, ts: UInt64) -> Bool {
                guard let e = layouts.decode(bytes, cpu: cpu, timeNs: ts) else { return false }
                // A thread's events come in runs: the last answer is reused instead of hashing the tid again.
                if e.tid != lastTid {
                    lastTid = e.tid
                    lastKnown = threads?.contains(e.tid) ?? true
                }
                if lastKnown {
                    out.append(e)
                    raw?.append(RawTraceRecord(cpu: cpu, timeNs: ts, data: Array(bytes)))
                } else if followsForks {
                    // In its place, until the thread is known to be the process's (started since the last scan) or not.
                    strangers.append(out.count)
                    out.append(e)
                    raw?.append(RawTraceRecord(cpu: cpu, timeNs: ts, data: Array(bytes)))
                } else {
                    foreign &+= 1
                }
                return out.count >= limit
            }
        }
        let box = Box(layouts, target == nil ? nil : threads, limit)
        // Room for about what the last read found: the list is not grown (copied) again and again as it fills.
        box.out.reserveCapacity(min(limit, max(256, lastReadCount + lastReadCount / 4)))
        if keepRaw { box.raw = [] }
        box.followsForks = followsForks
        if let readers = cpuReaders {
            readers.read(lost: box.lost) { bytes, cpu, ts in box.take(bytes, cpu: cpu, ts: ts) }
        } else {
            let ctx = Unmanaged.passUnretained(box).toOpaque()
            _ = fs.tracefs_iterate_raw_events(tep, inst, nil, 0, { _, record, cpu, ctx in
                guard let record, let ctx else { return 0 }
                let box = Unmanaged<Box>.fromOpaque(ctx).takeUnretainedValue()
                let r = record.pointee
                box.lost(Int(r.missed_events))
                guard let data = r.data else { return 0 }
                return box.take(UnsafeRawBufferPointer(start: data, count: Int(r.size)), cpu: Int32(cpu), ts: r.ts) ? 1 : 0
            }, ctx)
        }
        missed &+= box.missed
        if box.uncounted { missedUncounted = true }
        // Threads started since the last scan (the kernel follows them) are the process's; the others' events leave,
        // counted as foreign. The rest keep the order the kernel gave them in.
        if !box.strangers.isEmpty {
            for tid in Set(box.strangers.map { box.out[$0].tid }) { _ = admit(tid) }
            let dropped = Set(box.strangers.filter { !threads.contains(box.out[$0].tid) })
            if !dropped.isEmpty {
                box.foreign &+= UInt64(dropped.count)
                box.out = box.out.indices.filter { !dropped.contains($0) }.map { box.out[$0] }
                if let raw = box.raw { box.raw = raw.indices.filter { !dropped.contains($0) }.map { raw[$0] } }
            }
        }
        // In time order: the per-CPU buffers come one after another, and a thread that moved between CPUs had its events
        // out of order (in the lab, a vCPU's KVM_RUN entry after the exit it preceded: a conversion paired with an old
        // re-entry). Stable: events of one timestamp keep the kernel's order.
        foreign &+= box.foreign
        decoded &+= UInt64(box.out.count)
        lastReadCount = box.out.count
        let (out, outRaw) = release.take(box.out, raw: box.raw, readStartedNs: onMonotonicClock ? startedNs : nil, final: final)
        if let kept = outRaw { raw += kept }
        return out
    }

}

/// Gives out a session's events in time order across reads. One CPU's buffer is read after another's, and an event
/// written on a CPU already read comes in the next read, older than events given out from the CPUs read after it: a
/// thread that moved between CPUs had its events out of order that way, and two threads' conversions of one page
/// were applied in the wrong order (the traced map kept the older). So a read gives out only what is older than its
/// own start, less `holdBackNs` (the time an event takes to be written): all of that was in the buffers when the read
/// began. The rest waits for a later read, or a `final` one (the process has gone: nothing older can come).
struct TimeOrderedRelease {
    /// Longer than any event's write (in atomic context, a few µs) and than the gap between the trace clock's fast
    /// monotonic read and CLOCK_MONOTONIC's.
    static let holdBackNs: UInt64 = 2_000_000
    /// The hold-back never grows past this (what the views wait for a traced event at worst).
    static let maxHoldBackNs: UInt64 = 500_000_000
    private(set) var held: [TraceEvent] = []
    /// Events given out older than one given out by an earlier read: written later than the hold-back after their
    /// time (the consumers that depend on order, such as `TracedAttributes`, allow for it).
    private(set) var late: UInt64 = 0
    /// The most any of them came after the newest given out before it.
    private(set) var worstLatenessNs: UInt64 = 0
    /// What a read holds back now: `holdBackNs`, or twice the worst lateness seen (up to `maxHoldBackNs`). In the lab
    /// an L1 vCPU that stamped an event can be descheduled by its host for tens of milliseconds before the event is
    /// committed, and once a trace has seen that, it waits long enough for the next one.
    var currentHoldBackNs: UInt64 { min(Self.maxHoldBackNs, max(Self.holdBackNs, worstLatenessNs &* 2)) }
    private var newestGivenNs: UInt64 = 0
    private var heldRaw: [RawTraceRecord] = []

    /// `events` read by a read that began at `readStartedNs` (on the trace's clock; nil: the clock is another, and
    /// nothing is held), with what earlier reads held, in time order up to where a later read could still add.
    mutating func take(_ events: [TraceEvent], raw: [RawTraceRecord]?, readStartedNs: UInt64?, final: Bool) -> ([TraceEvent], [RawTraceRecord]?) {
        var (out, outRaw) = TraceSession.inTimeOrder(held.isEmpty ? events : held + events, raw: raw.map { heldRaw.isEmpty ? $0 : heldRaw + $0 })
        var cut = out.count
        if !final, let start = readStartedNs {
            let limit = start &- min(start, currentHoldBackNs)
            var lo = 0, hi = out.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if out[mid].timeNs < limit { lo = mid + 1 } else { hi = mid }
            }
            cut = lo
        }
        if cut < out.count {
            held = Array(out[cut...])
            heldRaw = outRaw.map { Array($0[cut...]) } ?? []
            out.removeSubrange(cut...)
            outRaw?.removeSubrange(cut...)
        } else {
            held = []
            heldRaw = []
        }
        for i in out.indices {   // in time order: a prefix
            let t = out[i].timeNs
            guard t < newestGivenNs else { break }
            late &+= 1
            worstLatenessNs = max(worstLatenessNs, newestGivenNs - t)
        }
        if let last = out.last { newestGivenNs = max(newestGivenNs, last.timeNs) }
        return (out, outRaw)
    }
}

/// Each CPU's raw buffer of an instance (`per_cpu/cpuN/trace_pipe_raw`), opened once for the session and read page
/// by page without blocking (libtracefs's `tracefs_cpu`), the records of each page walked in place
/// (`RingBufferPage`; libtraceevent's kbuffer before). `tracefs_iterate_raw_events` opens, maps and closes every
/// CPU's files on each call: in the lab, at ten reads a second, that alone took the guest's vCPUs a quarter of a CPU.
final class CPUReaders {
    private let fs: ctracefs_api
    private var cpus: [(cpu: Int32, reader: OpaquePointer)] = []
    private var page: UnsafeMutableRawPointer
    private let pageSize: Int

    /// nil where the libraries lack the per-CPU readers, or no CPU's buffer opens.
    init?(_ fs: ctracefs_api, _ instance: OpaquePointer) {
        guard let open = fs.tracefs_cpu_open, let readSize = fs.tracefs_cpu_read_size else { return nil }
        self.fs = fs
        var size = 0
        for cpu in 0..<Int32(max(1, sysconf(Int32(_SC_NPROCESSORS_CONF)))) {
            guard let r = open(instance, cpu, true) else { continue }
            cpus.append((cpu, r))
            size = max(size, Int(readSize(r)))
        }
        pageSize = max(size, 4096)
        page = UnsafeMutableRawPointer.allocate(byteCount: pageSize, alignment: 8)
        if cpus.isEmpty { close(); return nil }
    }

    deinit { close() }

    private var closed = false
    func close() {
        guard !closed else { return }
        closed = true
        for c in cpus { fs.tracefs_cpu_close?(c.reader) }
        cpus = []
        page.deallocate()
    }

    /// Every page each CPU's buffer holds now, its records given to `take` (bytes, CPU, timestamp) until it returns
    /// true, then the rest of that page (a page read is gone from the kernel's buffer: its records are taken, not
    /// dropped unseen; the rest waits in the buffer for the next read); `lost` is given what each page says the kernel
    /// lost before it (a number, or -1: some it did not count, where the page had no room for the number).
    func read(lost: (Int) -> Void, _ take: (UnsafeRawBufferPointer, Int32, UInt64) -> Bool) {
        guard !closed, let read = fs.tracefs_cpu_read else { return }
        for c in cpus {
            // A page at a time, until the buffer is empty (EAGAIN) or `take` has enough.
            while true {
                let n = Int(read(c.reader, page, true))
                guard n > 0 else { break }
                let bytes = UnsafeRawBufferPointer(start: page, count: min(n, pageSize))
                let m = RingBufferPage.missed(bytes)
                if m != 0 { lost(m) }
                if RingBufferPage.forEachRecord(bytes, { take($0, c.cpu, $1) }) { return }
            }
        }
    }
}
