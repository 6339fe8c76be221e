import Prometheus
import Schema

/// Every metric vmscope exports: name, type and help, each spelled once here. Names follow Prometheus's conventions
/// (`vmscope_` prefix, `_total` on counters, base units: bytes and seconds). Every per-VM series carries the labels
/// `pid`, `name` and `vmm` (`vmscope`, `qemu` or `other`); none carries a GPA or GFN.
public enum Metric: String, CaseIterable, Sendable {
    case vcpus = "vmscope_vcpus"
    case residentBytes = "vmscope_resident_memory_bytes"
    case kvmExits = "vmscope_kvm_exits_total"
    case kvmExitsByReason = "vmscope_kvm_exits_by_reason_total"
    case kvmHypercalls = "vmscope_kvm_hypercalls_total"
    case userspaceExits = "vmscope_userspace_exits_total"
    case memoryFaultExits = "vmscope_memory_fault_exits_total"
    case conversionsRequested = "vmscope_conversions_requested_total"
    case conversionsDone = "vmscope_conversions_done_total"
    case faultInjections = "vmscope_fault_injections_total"
    case eventsDropped = "vmscope_events_dropped_total"
    case privateBytes = "vmscope_memory_private_bytes"
    case sharedBytes = "vmscope_memory_shared_bytes"
    case attributeRuns = "vmscope_attribute_runs"
    case memslots = "vmscope_memslots"
    case vcpuState = "vmscope_vcpu_state"
    case conversionDuration = "vmscope_conversion_duration_seconds"
    case conversionLatency = "vmscope_conversion_latency_seconds"
    case tracedPrivateBytes = "vmscope_traced_private_bytes"
    case exporterVMs = "vmscope_exporter_vms"
    case exporterCollectionSeconds = "vmscope_exporter_collection_seconds"
    case seriesRefused = "vmscope_exporter_series_refused_total"

    public enum Kind: String, Sendable { case counter, gauge, histogram }

    var descriptor: MetricNameDescriptor { MetricNameDescriptor(metricName: rawValue, unitName: "", helpText: help) }

    public var kind: Kind {
        switch self {
        case .kvmExits, .kvmExitsByReason, .kvmHypercalls, .userspaceExits, .memoryFaultExits, .conversionsRequested,
             .conversionsDone, .faultInjections, .eventsDropped, .seriesRefused: .counter
        case .conversionDuration, .conversionLatency: .histogram
        default: .gauge
        }
    }

    public var help: String {
        switch self {
        case .vcpus: "vCPUs of the VM."
        case .residentBytes: "Resident memory of the VM's process (VmRSS)."
        case .kvmExits: "Every exit KVM counted for the VM's vCPUs (KVM's exits statistic), handled in the kernel or not."
        case .kvmExitsByReason: "KVM's per-reason exit statistics (io, mmio, halt, irq, signal, ...), by reason."
        case .kvmHypercalls: "Hypercalls KVM counted (KVM's hypercalls statistic)."
        case .userspaceExits: "Exits to the VMM by KVM_EXIT reason: counted by vmscope's VMM, or from kvm_userspace_exit tracepoints for other VMMs."
        case .memoryFaultExits: "Memory-fault exits, by who reported them (source: kernel = KVM_EXIT_MEMORY_FAULT, vmm = the vmm engine's MMIO exits, trace = kvm_userspace_exit reason MEMORY_FAULT) and whether the access wanted private memory (private: true, false, unknown)."
        case .conversionsRequested: "Private/shared conversions asked for, by direction (to-private, to-shared) and cause (command = the host, guest-request, implicit, injection)."
        case .conversionsDone: "Private/shared conversions done, by direction and cause."
        case .faultInjections: "Faults injected, by kind."
        case .eventsDropped: "Events lost before vmscope could count them, by buffer (fault-ring: the VMM's fault records; conversion-times: durations the exporter missed; conversion-steps: traced conversions' steps let go between passes; trace: kernel trace buffers)."
        case .privateBytes: "Guest RAM whose attribute is private."
        case .sharedBytes: "Guest RAM whose attribute is shared."
        case .attributeRuns: "Runs of equal attribute in the VM's private/shared map."
        case .memslots: "KVM memslots of the VM."
        case .vcpuState: "1 for the vCPU's current run state, 0 for the others."
        case .conversionDuration: "Time one conversion took in the VMM (attribute change, memslot relayout, discard)."
        case .conversionLatency: "Time each step of a conversion took on the thread that made it, as KVM's tracepoints timed it (source trace; step request = the exit before it to KVM_SET_MEMORY_ATTRIBUTES, convert = that ioctl, re-entry = its return to the next KVM_RUN), for any VMM, where the kernel traces conversions (Linux 6.17 and later)."
        case .tracedPrivateBytes: "Guest memory the traced map knows private: pages traced converting to private since the exporter started, not those converted before it (a lower bound), where the kernel traces conversions."
        case .exporterVMs: "KVM VMs the exporter sees."
        case .exporterCollectionSeconds: "Time the exporter's last collection pass took."
        case .seriesRefused: "Series a VM's readings would have made that the exporter refused: a name neither KVM nor the protocol defines (a peer inventing exit names, causes, kinds), or one past the per-VM cap."
        }
    }
}

/// Which VMM runs a VM (the `vmm` label).
public enum VMMKind: String, Sendable {
    case vmscope, qemu, other
}

/// What one collection pass read about one VM.
public struct VMReading: Sendable {
    public var pid: Int32
    public var name: String
    public var vmm: VMMKind
    public var vcpus: Int
    public var residentBytes: UInt64?
    /// KVM's cumulative statistics, summed over the VM's vCPUs (`exits`, `io_exits`, `hypercalls`, ...).
    public var kvmStats: [String: UInt64]
    /// Exits to userspace by KVM_EXIT reason name, where known (tracepoints, or the VMM's own counts).
    public var userspaceExits: [String: UInt64]?
    /// Memory-fault exits seen in tracepoints (kvm_userspace_exit reason MEMORY_FAULT), where traced.
    public var tracedMemoryFaults: UInt64?
    /// What a vmscope VMM's `query-metrics` said.
    public var vmmMetrics: VMMetrics?
    /// Conversions the trace timed since the last pass, each its steps; nil where conversions are not traced.
    public var tracedConversionSteps: [ConversionStepTimes]?
    /// Bytes the traced map knows private; nil where conversions are not traced.
    public var tracedPrivateBytes: UInt64?
    /// Traced conversions whose steps were let go since the exporter started (more than a pass's bound waited);
    /// nil where conversions are not traced.
    public var tracedStepsDropped: UInt64?

    public init(pid: Int32, name: String, vmm: VMMKind, vcpus: Int, residentBytes: UInt64?, kvmStats: [String: UInt64],
                userspaceExits: [String: UInt64]? = nil, tracedMemoryFaults: UInt64? = nil, vmmMetrics: VMMetrics? = nil) {
        self.pid = pid; self.name = name; self.vmm = vmm; self.vcpus = vcpus; self.residentBytes = residentBytes
        self.kvmStats = kvmStats; self.userspaceExits = userspaceExits; self.tracedMemoryFaults = tracedMemoryFaults
        self.vmmMetrics = vmmMetrics
    }
}

