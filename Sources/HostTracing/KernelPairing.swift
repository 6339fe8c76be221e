#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KVM

/// Events paired inside the kernel, where it has histogram triggers (`CONFIG_HIST_TRIGGERS`, which Debian's kernels and
/// the lab's 7.3 have): a hist trigger on the first event keeps each thread's newest one (some of its fields, in
/// variables) in the session's instance, and one on the second writes a synthetic event with them
/// (`onmatch(first).trace(…)`), on the same thread, in place of the second. The first event is never written to the
/// ring buffer (a trigger on a disabled event puts it in soft mode), and the second only where it pairs. A variable is
/// read once only where an expression uses it (histogram.rst: the others stay set for every later match, which paired
/// each `sys_exit_ioctl` of a thread with its last conversion's entry, 3,057 records for 381 conversions in the lab),
/// so the first event also keeps its time and the second takes the time between them (`common_timestamp - $t0`, on
/// the session's CLOCK_MONOTONIC: `clock=mono`): a second event with no first one since the last match has nothing to
/// subtract from, and writes nothing. Each pairing is then the one vmscope makes from the events: each thread's newest
/// first event, taken by its next second one; and the synthetic event holds the time between them.
///
/// - `memoryFaults`: `kvm_page_fault`, then a `kvm_userspace_exit` with reason MEMORY_FAULT. In the lab the page faults
///   were 70 % of what a paired tracer read (a conversion makes the guest fault its pages in again one at a time),
///   every one of them written by the kernel, read, decoded and dropped here but for the few a MEMORY_FAULT exit
///   follows. The exit itself is still traced; its paired fault comes just after it (`MemoryFaultPairing`).
/// - `ioctlResults`: `sys_enter_ioctl` of `KVM_SET_MEMORY_ATTRIBUTES`, then that thread's `sys_exit_ioctl`: a traced
///   conversion's result. `sys_exit_ioctl` fires on every ioctl's return (each `KVM_RUN` among them), and no event
///   filter can keep these alone (the return has no command); paired in the kernel, only the conversions' returns
///   are written, decoded as the `sys_exit_ioctl` they stand for (at its time, a few hundred nanoseconds later).
///
/// The synthetic events are global (`synthetic_events`): each is named for this process and session, removed with it
/// (`removeTriggers`, then the instance, then `removeEvent`), and by the next session (`removeStale`) when its
/// process died first. The triggers are the instance's.
struct KernelPairing: Sendable {
    /// What is paired: the two events, what is kept of the first, what the synthetic event holds.
    struct Spec: Sendable {
        /// The synthetic event's name before the session's (`vmscope_mf_`).
        let prefix: String
        /// Its name in layouts and raw recordings, whatever the session named it in the kernel.
        let layoutName: String
        let first: (group: String, event: String)
        /// Each variable and the first event's field it keeps.
        let variables: [(variable: String, field: String)]
        /// The first event's trigger applies only where this holds.
        let firstFilter: String?
        let second: (group: String, event: String)
        let secondFilter: String?
        /// The synthetic event's fields in order: each from a variable of the first event or a field of the second.
        let fields: [(name: String, variable: String?, secondField: String?)]
        /// The prefix of the variables holding the first event's time (`_t0`) and the time since it (`_ns`), which the
        /// synthetic event's last field, `since_first_ns`, holds.
        let timeVariable: String
        /// The event no longer read once the kernel pairs (its records are in the synthetic event's).
        let replaces: String

        /// Which of a session's `KernelPairs` this is.
        var option: TraceSession.KernelPairs { layoutName == EventLayouts.kernelPairedFault ? .memoryFaults : .ioctlResults }

        /// The field a synthetic field's value comes from, as (event, field).
        func source(_ f: (name: String, variable: String?, secondField: String?)) -> (group: String, event: String, field: String)? {
            if let v = f.variable, let field = variables.first(where: { $0.variable == v })?.field { return (first.group, first.event, field) }
            if let s = f.secondField { return (second.group, second.event, s) }
            return nil
        }
    }

    static let memoryFaults = Spec(
        prefix: "vmscope_mf_", layoutName: EventLayouts.kernelPairedFault,
        first: ("kvm", "kvm_page_fault"),
        variables: [("vmscope_gpa", "fault_address"), ("vmscope_ec", "error_code"), ("vmscope_vcpu", "vcpu_id")], firstFilter: nil,
        second: ("kvm", "kvm_userspace_exit"), secondFilter: "reason == \(ExitReason.memoryFault.rawValue)",
        fields: [("vcpu_id", "vmscope_vcpu", nil), ("gpa", "vmscope_gpa", nil), ("error_code", "vmscope_ec", nil), ("errno", nil, "errno")],
        timeVariable: "vmscope_pf",
        replaces: "kvm_page_fault")

    static let ioctlResults = Spec(
        prefix: "vmscope_ir_", layoutName: EventLayouts.kernelPairedIoctlResult,
        first: ("syscalls", "sys_enter_ioctl"),
        variables: [("vmscope_cmd", "cmd")], firstFilter: "cmd == \(KVMIoctl.setMemoryAttributes.value)",
        second: ("syscalls", "sys_exit_ioctl"), secondFilter: nil,
        fields: [("cmd", "vmscope_cmd", nil), ("ret", nil, "ret")],
        timeVariable: "vmscope_io",
        replaces: "sys_exit_ioctl")

    static let all = [memoryFaults, ioctlResults]

    let spec: Spec
    /// The synthetic event's name in the kernel (`vmscope_mf_PID` or `vmscope_mf_PID_N`).
    let name: String
    let tracingDirectory: String
    /// The instance's directory (`…/instances/vmscope-PID`).
    let instanceDirectory: String
    var formatPath: String { "\(tracingDirectory)/events/synthetic/\(name)/format" }

    /// The synthetic event's name for a session's instance: `vmscope-PID` → `vmscope_mf_PID`, `vmscope-PID-N` →
    /// `vmscope_mf_PID_N` (a synthetic event's name is a C identifier).
    static func name(_ spec: Spec, sessionInstance: String) -> String {
        spec.prefix + sessionInstance.dropFirst("vmscope-".count).replacingOccurrences(of: "-", with: "_")
    }

    /// A session's pairing as its instance's name says it was installed (also to remove what a killed session left).
    init(_ spec: Spec, sessionInstance: String, tracingDirectory dir: String) {
        self.spec = spec
        name = Self.name(spec, sessionInstance: sessionInstance)
        tracingDirectory = dir
        instanceDirectory = "\(dir)/instances/\(sessionInstance)"
    }

    /// Why the kernel cannot pair here; nil when it can (the files the feature needs are there).
    static func unavailable(tracingDirectory dir: String, instanceDirectory inst: String) -> String? {
        guard access(dir + "/synthetic_events", W_OK) == 0, access(inst + "/events/kvm/kvm_userspace_exit/hist", F_OK) == 0 else {
            return "this kernel has no histogram triggers (CONFIG_HIST_TRIGGERS)"
        }
        return nil
    }

    /// Appends `text` to a tracefs control file (never truncating it: an empty `synthetic_events` written over would
    /// remove every synthetic event on the machine). The kernel's words for a refusal are in `errorLog`.
    static func append(_ path: String, _ text: String, errorLog: String? = nil) throws(TraceError) {
        let fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
        guard fd >= 0 else { throw TraceError("cannot open \(path)", errno: errno) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == bytes.count else {
            let e = errno
            let log = errorLog.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }?.split(separator: "\n").suffix(2).joined(separator: " | ") ?? ""
            throw TraceError("the kernel refused '\(text.trimmingCharacters(in: .newlines))' in \(path)", errno: e, log.isEmpty ? "" : ": " + log)
        }
    }

    var firstTrigger: String { "\(instanceDirectory)/events/\(spec.first.group)/\(spec.first.event)/trigger" }
    var secondTrigger: String { "\(instanceDirectory)/events/\(spec.second.group)/\(spec.second.event)/trigger" }
    var firstTriggerText: String {
        "hist:keys=common_pid:" + (spec.variables.map { "\($0.variable)=\($0.field)" } + ["\(spec.timeVariable)_t0=common_timestamp"]).joined(separator: ",")
            + ":clock=mono" + (spec.firstFilter.map { " if " + $0 } ?? "")
    }
    var secondTriggerText: String {
        let params = (spec.fields.map { f in f.variable.map { "$" + $0 } ?? f.secondField ?? "" } + ["$\(spec.timeVariable)_ns"]).joined(separator: ",")
        return "hist:keys=common_pid:\(spec.timeVariable)_ns=common_timestamp-$\(spec.timeVariable)_t0:clock=mono"
            + ":onmatch(\(spec.first.group).\(spec.first.event)).trace(\(name),\(params))" + (spec.secondFilter.map { " if " + $0 } ?? "")
    }

    /// Creates the synthetic event and the two triggers in the instance; on any failure undoes what it did and throws.
    /// `fieldType` gives a field's C type as its event's format names it (`unsigned int` for `vcpu_id`): the synthetic
    /// event's fields take their sources' types, which the kernel checks `trace()`'s parameters against.
    static func install(_ spec: Spec, sessionInstance: String, tracingDirectory dir: String,
                        fieldType: (_ group: String, _ event: String, _ field: String) -> String?) throws(TraceError) -> KernelPairing {
        let k = KernelPairing(spec, sessionInstance: sessionInstance, tracingDirectory: dir)
        if let why = unavailable(tracingDirectory: dir, instanceDirectory: k.instanceDirectory) { throw TraceError(why) }
        var declared: [String] = []
        for f in spec.fields {
            guard let src = spec.source(f), let type = fieldType(src.group, src.event, src.field) else {
                throw TraceError("\(spec.first.event) or \(spec.second.event) lacks the field the kernel's pairing needs for \(f.name)")
            }
            declared.append("\(type) \(f.name)")
        }
        declared.append("u64 since_first_ns")
        try append(dir + "/synthetic_events", "\(k.name) " + declared.joined(separator: "; ") + "\n", errorLog: dir + "/error_log")
        do throws(TraceError) {
            try append(k.firstTrigger, k.firstTriggerText + "\n", errorLog: k.instanceDirectory + "/error_log")
            try append(k.secondTrigger, k.secondTriggerText + "\n", errorLog: k.instanceDirectory + "/error_log")
        } catch {
            k.removeTriggers()
            k.removeEvent()
            throw error
        }
        return k
    }

    /// The triggers, the second event's first (it reads the first's variables), then the synthetic event in the
    /// instance: before the instance goes (the kernel refuses to remove an instance such triggers hold: EBUSY).
    func removeTriggers() {
        try? Self.append(secondTrigger, "!" + secondTriggerText + "\n")
        try? Self.append(firstTrigger, "!" + firstTriggerText + "\n")
        let fd = open(instanceDirectory + "/events/synthetic/\(name)/enable", O_WRONLY | O_CLOEXEC)
        if fd >= 0 {
            _ = write(fd, "0", 1)
            close(fd)
        }
    }

    /// The synthetic event (after `removeTriggers`: one a trigger names cannot be removed).
    func removeEvent() {
        try? Self.append(tracingDirectory + "/synthetic_events", "!\(name)\n")
    }

    /// Removes the synthetic events of sessions whose process is gone (killed before it could clean up; their
    /// instances, and so their triggers, removed first by `TraceSession.removeStaleInstances`).
    static func removeStale(tracingDirectory dir: String) {
        guard let text = try? String(contentsOfFile: dir + "/synthetic_events", encoding: .utf8) else { return }
        for line in text.split(separator: "\n") {
            guard let name = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first,
                  let spec = all.first(where: { name.hasPrefix($0.prefix) }),
                  let owner = Int32(name.dropFirst(spec.prefix.count).prefix { $0 != "_" }), kill(owner, 0) != 0, errno == ESRCH else { continue }
            try? append(dir + "/synthetic_events", "!\(name)\n")
        }
    }
}
