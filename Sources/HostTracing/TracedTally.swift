import Foundation
import KVM
import Schema

extension HostVMs {
    /// What `top` and the exporter keep of the traced events, by process: exits to userspace by reason, `kvm_mmio`
    /// events, and for the VMMs whose conversions are traced the traced private/shared map and each conversion's
    /// steps. It takes decoded events one at a time (`take`), from a live session (`TracedCounts`) or a recording
    /// (the benchmarks), and reads nothing but /proc (a new thread's process, once).
    public final class TracedTally: @unchecked Sendable {
        // @unchecked: one thread uses it (`top`'s collection, the exporter's).

        /// What is counted and paired for one process, reached from its threads' events through the last thread's (a
        /// thread's events come in runs): an event costs no hash of a pid or a reason. Kept in dictionaries by pid
        /// and reason, the counting took four hashes an event, and with the exclusivity checks of their accesses it
        /// was half of `top`'s steady CPU in the lab (callgrind).
        final class Process {
            /// Exits to userspace by reason number: those below `lowReasons` by index, any other in `high`.
            @exclusivity(unchecked) var low = [UInt64](repeating: 0, count: TracedTally.lowReasons)
            @exclusivity(unchecked) var high: [UInt32: UInt64] = [:]
            @exclusivity(unchecked) var mmio: UInt64 = 0
            /// The traced private/shared map, where the kernel traces conversions (`mapping` false: no conversion event
            /// seen since the process was last followed). Not an optional: mutated through one, each event copied it
            /// (a retain and release of each of its buffers).
            @exclusivity(unchecked) var attributes = TracedAttributes(complete: false)
            @exclusivity(unchecked) var mapping = false
            /// Conversion timing: the exits and `KVM_RUN` entries of the process's threads around its conversions.
            @exclusivity(unchecked) var latency = ConversionLatencyPairing()
            /// Conversion steps timed since `takeConversionSteps` last took them (at most `stepsLimit`; more are
            /// counted in `stepsDropped`).
            @exclusivity(unchecked) var steps: [ConversionStepTimes] = []
            @exclusivity(unchecked) var stepsDropped: UInt64 = 0

            /// A conversion's event (`map`: one the traced map takes), or an exit or `KVM_RUN` entry around one.
            func pair(_ e: TraceEvent, map: Bool) {
                var completed: TracedAttributes.Conversion?
                if map {
                    if !mapping { attributes = TracedAttributes(complete: false); mapping = true }
                    completed = attributes.apply(e)
                }
                for t in latency.apply(e, completed: completed) {
                    if steps.count < TracedTally.stepsLimit { steps.append(t.stepTimes) } else { stepsDropped &+= 1 }
                }
            }

            func count(_ reason: UInt32) {
                if reason < TracedTally.lowReasons { low.withUnsafeMutableBufferPointer { $0[Int(reason)] &+= 1 } } else { high[reason, default: 0] &+= 1 }
            }
            var byReason: [(reason: UInt32, count: UInt64)] {
                low.enumerated().compactMap { $0.element > 0 ? (UInt32($0.offset), $0.element) : nil } + high.map { ($0.key, $0.value) }
            }
            /// Forgets the conversions' pairing (the process is no longer followed, or events were lost).
            func unfollow() { attributes = TracedAttributes(complete: false); mapping = false; latency = ConversionLatencyPairing(); steps = [] }
        }
        /// Reasons counted by index (KVM_EXIT_* numbers run to about 40).
        static let lowReasons = 64
        static let stepsLimit = 65_536
        private var processes: [Int32: Process] = [:]
        private var processOfThread: [Int32: (pid: Int32, process: Process)] = [:]
        /// The last thread an event came from, and its process (tid 0: none; the kernel's idle task is never traced as
        /// a VMM's).
        private var lastThread: (tid: Int32, pid: Int32, process: Process?) = (0, 0, nil)

        /// A thread's process (its thread group): /proc's, or the benchmarks' own for a recording's threads.
        private let threadGroup: @Sendable (Int32) -> Int32

        public init(threadGroup: @escaping @Sendable (Int32) -> Int32 = TracedTally.threadGroup(ofThread:)) {
            self.threadGroup = threadGroup
        }

        /// The thread group of `tid` from /proc/TID/status (`tid` itself when it cannot be read: gone already).
        public static func threadGroup(ofThread tid: Int32) -> Int32 {
            let status = readPseudoFile("/proc/\(tid)/status") ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("Tgid:") }.flatMap { Int32($0.dropFirst(5).trimmingCharacters(in: .whitespaces)) } ?? tid
        }

        /// Exits to userspace of process `pid` by KVM_EXIT reason name (`MMIO`, `IO`, `MEMORY_FAULT`, ...).
        public func userspaceExitsByReason(_ pid: Int32) -> [String: UInt64] {
            var named: [String: UInt64] = [:]
            for (reason, n) in processes[pid]?.byReason ?? [] { named[ExitReason(rawValue: reason).name, default: 0] &+= n }
            return named
        }
        /// Exits to userspace of every reason, per process.
        public func userspaceExits(_ pid: Int32) -> UInt64 {
            processes[pid]?.byReason.reduce(0) { $0 &+ $1.count } ?? 0
        }
        /// Exits to userspace of one reason, per process.
        public func userspaceExits(_ pid: Int32, reason: ExitReason) -> UInt64 {
            guard let p = processes[pid] else { return 0 }
            return reason.rawValue < Self.lowReasons ? p.low[Int(reason.rawValue)] : p.high[reason.rawValue] ?? 0
        }
        /// `kvm_mmio` events of process `pid`.
        public func mmio(_ pid: Int32) -> UInt64 { processes[pid]?.mmio ?? 0 }
        /// Conversion steps of `pid` left out since the last `takeConversionSteps` (more than `stepsLimit` between two).
        public func stepsDropped(_ pid: Int32) -> UInt64 { processes[pid]?.stepsDropped ?? 0 }

        /// Only `pids` are followed now: the others' conversions are no longer paired. What is kept of processes that
        /// have ended goes (their series went with them): kept for every process whose threads were ever traced, it
        /// grew with every VM a long-running exporter saw, and a thread id the kernel gave again was taken for the
        /// ended process's thread.
        public func follow(_ pids: Set<Int32>) {
            var gone: Set<Int32> = []
            for (pid, p) in processes where !pids.contains(pid) {
                p.unfollow()
                if kill(pid, 0) != 0 && errno == ESRCH { gone.insert(pid) }
            }
            guard !gone.isEmpty else { return }
            for pid in gone { processes[pid] = nil }
            processOfThread = processOfThread.filter { !gone.contains($0.value.pid) }
            lastThread = (0, 0, nil)
        }
        /// The processes something is kept for.
        public var processesKept: Set<Int32> { Set(processes.keys) }

        /// The conversion steps timed for `pid` since the last call.
        public func takeConversionSteps(_ pid: Int32) -> [ConversionStepTimes] {
            guard let p = processes[pid] else { return [] }
            defer { p.steps = [] }
            return p.steps
        }

        /// Bytes the traced map of `pid` knows private.
        public func privateBytes(_ pid: Int32) -> UInt64 {
            // The known runs themselves (a view would also list the unknown ranges between them, unused here).
            guard let p = processes[pid], p.mapping else { return 0 }
            return p.attributes.runs.filter(\.isPrivate).reduce(0) { $0 &+ ($1.end - $1.start) } &* 4096
        }

        /// Events were lost, and any of them may have been a conversion: no traced map is exact any more.
        public func forgetMaps() {
            for p in processes.values where p.mapping { p.attributes.forget() }
        }

        /// The process of thread `tid` (its thread group, from /proc, once a thread) and what is kept for it.
        func process(ofThread tid: Int32) -> (pid: Int32, process: Process) {
            if tid == lastThread.tid, let p = lastThread.process { return (lastThread.pid, p) }
            let found: (pid: Int32, process: Process)
            if let known = processOfThread[tid] {
                found = known
            } else {
                let pid = threadGroup(tid)
                let p = processes[pid] ?? Process()
                processes[pid] = p
                found = (pid, p)
                processOfThread[tid] = found
            }
            lastThread = (tid, found.pid, found.process)
            return found
        }

        /// One event: counted, and where conversions are traced (`pairs`), paired into its process's map and steps.
        /// An exit or a `KVM_RUN` entry is no conversion's: the map does not see it, only the steps' pairing.
        public func take(_ e: TraceEvent, pairs: Bool) {
            let p = process(ofThread: e.tid).process
            switch e.kind {
            case .userspaceExit(let reason, _):
                p.count(reason.rawValue)
                if pairs { p.pair(e, map: false) }
            case .mmio:
                p.mmio &+= 1
            case .ioctlEnter(_, let cmd):
                if pairs { p.pair(e, map: cmd == Self.setMemoryAttributes) }
            case .setMemoryAttributes, .ioctlExit:
                if pairs { p.pair(e, map: true) }
            default:
                break
            }
        }
        private static let setMemoryAttributes = UInt64(KVMIoctl.setMemoryAttributes.value)
    }
}
