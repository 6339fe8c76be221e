/// The control protocol's enumerations (docs/control-protocol.md). Each value is spelled once, as its case's raw
/// value; everything else (the VMM, the server, the client, the inspector, the recorder) names it through the case.
public protocol SchemaEnum: RawRepresentable<String>, CaseIterable, Sendable, Hashable {}

extension SchemaEnum {
    /// "'a', 'b' or 'c'", for messages that list what is accepted.
    public static var choices: String {
        let all = allCases.map(\.rawValue)
        return all.count < 2 ? all.joined() : all.dropLast().joined(separator: ", ") + " or " + all.last!
    }
}

/// A `SchemaEnum` value as a peer sent it: one this version knows, or a newer peer's value, kept as its text and
/// shown as it came (never dropped, never guessed).
public enum Open<Known: SchemaEnum>: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    case known(Known)
    case unknown(String)

    public init(_ raw: String) { self = Known(rawValue: raw).map { .known($0) } ?? .unknown(raw) }
    public init(_ known: Known) { self = .known(known) }
    /// Wire text as written in a test or a fixture (sources name values through `Known`'s cases).
    public init(stringLiteral raw: String) { self.init(raw) }

    /// The text on the wire.
    public var rawValue: String {
        switch self {
        case .known(let k): k.rawValue
        case .unknown(let s): s
        }
    }

    public var known: Known? { if case .known(let k) = self { k } else { nil } }
    public var description: String { rawValue }

    public static func == (a: Open, b: Known) -> Bool { a.known == b }
    public static func != (a: Open, b: Known) -> Bool { a.known != b }

    /// In `switch` statements: `case .kernel:` matches `.known(.kernel)`.
    public static func ~= (pattern: Known, value: Open) -> Bool { value.known == pattern }
}

extension JSON {
    /// A string member read as a schema value (nil when absent or not a string).
    public func open<E: SchemaEnum>(_: E.Type = E.self) -> Open<E>? { stringValue.map { Open<E>($0) } }
    public static func e<E: SchemaEnum>(_ v: E) -> JSON { .string(v.rawValue) }
    public static func e<E: SchemaEnum>(_ v: Open<E>) -> JSON { .string(v.rawValue) }
}

/// What a faulting access did (fault record `access`).
public enum FaultAccess: String, SchemaEnum { case read, write, exec, unknown }

/// Who detected a fault: a real `KVM_EXIT_MEMORY_FAULT` (`kernel`) or the VMM's own enforcement (`vmm`).
public enum FaultSource: String, SchemaEnum {
    case kernel, vmm
    /// Seen by vmscope in KVM's tracepoints (a trace-only view), not reported by a VMM.
    case trace
}

/// The KVM exit a fault record came from; `none` for an injection's record.
public enum FaultExit: String, SchemaEnum {
    case memoryFault = "MEMORY_FAULT", mmio = "MMIO", internalError = "INTERNAL_ERROR", none
    /// A guest page fault KVM handled in the kernel (`kvm_page_fault`; trace records only).
    case pageFault = "PAGE_FAULT"
}

/// A page's attribute when it faulted; `none` outside RAM.
public enum PageAttribute: String, SchemaEnum { case `private`, shared, none }

/// What the VMM did about a fault.
public enum FaultAction: String, SchemaEnum {
    case converted, paused, reported, injected
    /// A revoked page given its mapping back (attribute unchanged).
    case remapped
}

/// `inject-fault`'s kinds, each a real host or KVM operation.
public enum InjectionKind: String, SchemaEnum { case mce, nmi, discard, revoke, flip }

/// What the VMM does when the guest touches a page through the wrong view.
public enum FaultPolicy: String, SchemaEnum {
    /// Convert the page implicitly, then complete the access against the new backing.
    case convert
    /// Stop the vCPU (`fault-stopped`) until resumed; resuming completes the access as `convert` would.
    case pause
    /// Record the fault; the access completes as MMIO to nothing (reads all-ones, writes dropped).
    case report
}

/// Run state of a vCPU.
public enum VCPURunState: String, SchemaEnum {
    case running, halted, paused, faultStopped = "fault-stopped", shutdown, error
}

/// `vcpu-control` actions. `step` runs the vCPU to its next exit (not one instruction).
public enum VCPUAction: String, SchemaEnum { case pause, resume, step }

/// Which view of guest memory a memslot maps.
public enum MemslotView: String, SchemaEnum { case `private`, shared, plain }

/// What backs a memslot.
public enum MemslotBacking: String, SchemaEnum { case guestMemfd = "guest_memfd", memfd, anonymous }

/// `read-memory`'s `view` argument.
public enum ReadView: String, SchemaEnum { case `private`, shared, auto }

/// The two implementations of private/shared attributes (docs/attribute-engines.md).
public enum AttributeEngineKind: String, SchemaEnum, Codable {
    /// `KVM_SET_MEMORY_ATTRIBUTES` and real `KVM_EXIT_MEMORY_FAULT`, on a VM type with private memory.
    case kernel
    /// Memslot layout with a shared alias, enforced by the VMM on any VM type.
    case vmm
}

/// Why an attribute changed (`MEMORY_ATTRIBUTES_CHANGED.cause`).
public enum ConversionCause: String, SchemaEnum {
    case command, guestRequest = "guest-request", implicit, injection
}

/// The commands, in `query-commands` order.
public enum CommandName: String, SchemaEnum {
    case qmpCapabilities = "qmp_capabilities", queryCommands = "query-commands", queryVersion = "query-version"
    case queryVM = "query-vm", queryMemslots = "query-memslots", queryMemoryAttributes = "query-memory-attributes"
    case setMemoryAttributes = "set-memory-attributes", queryVCPUs = "query-vcpus"
    case queryMemoryFaults = "query-memory-faults", vcpuControl = "vcpu-control", injectFault = "inject-fault"
    case readMemory = "read-memory", setFaultPolicy = "set-fault-policy", querySnapshot = "query-snapshot"
    case queryMetrics = "query-metrics", setEvents = "set-events"

    /// Commands that change the VM or read its memory (each is audited, done or refused).
    public var isAudited: Bool {
        switch self {
        case .setMemoryAttributes, .vcpuControl, .injectFault, .setFaultPolicy, .readMemory: true
        default: false
        }
    }
}

/// The events.
public enum EventName: String, SchemaEnum {
    case memoryFault = "MEMORY_FAULT", memoryAttributesChanged = "MEMORY_ATTRIBUTES_CHANGED"
    case memslotsChanged = "MEMSLOTS_CHANGED", vcpuStateChanged = "VCPU_STATE_CHANGED"
    case faultInjected = "FAULT_INJECTED", guestReport = "GUEST_REPORT", eventsDropped = "EVENTS_DROPPED"
}

extension SchemaValue {
    /// A copy changed by `body` (building a value member by member).
    public func with(_ body: (inout Self) -> Void) -> Self {
        var v = self
        body(&v)
        return v
    }
}

/// `record?.action == .paused`: an absent value equals no case.
public func == <K: SchemaEnum>(a: Open<K>?, b: K) -> Bool { a?.known == b }
public func != <K: SchemaEnum>(a: Open<K>?, b: K) -> Bool { a?.known != b }
