import Foundation

// MARK: Events

/// An event as the protocol carries it: vmscope's, typed; anyone else's (a stock QEMU's `STOP`), by name with its
/// data as it came.
public enum Event: Sendable, Equatable {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let event = "event", data = "data", gpa = "gpa", size = "size", `private` = "private"
        static let cause = "cause", vcpu = "vcpu", generation = "generation", index = "index", state = "state"
        static let reason = "reason", kind = "kind", value = "value", count = "count", `where` = "where"
    }

    case memoryFault(FaultBatch)
    case memoryAttributesChanged(gpa: UInt64, size: UInt64, isPrivate: Bool, cause: Open<ConversionCause>, vcpu: Int?)
    case memslotsChanged(generation: UInt64?)
    case vcpuStateChanged(index: Int?, state: Open<VCPURunState>?, reason: String)
    case faultInjected(InjectionReport)
    case guestReport(vcpu: Int?, kind: Open<GuestReportKind>?, value: UInt64)
    /// Events the server (or, with `where`, this client) dropped.
    case eventsDropped(count: UInt64, where: String?)
    case other(name: String, data: JSON?)

    /// From a whole event message (`{"event": ..., "data": ..., "timestamp": ...}`); nil when it is not one.
    public init?(message e: JSON) {
        guard let name = e[Key.event]?.stringValue else { return nil }
        self.init(name: name, data: e[Key.data])
    }

    public init(name: String, data d: JSON?) {
        switch EventName(rawValue: name) {
        case .memoryFault?: self = .memoryFault(FaultBatch(data: d))
        case .memoryAttributesChanged?:
            self = .memoryAttributesChanged(gpa: d?[Key.gpa]?.uint64Value ?? 0, size: d?[Key.size]?.uint64Value ?? 0,
                                            isPrivate: d?[Key.`private`]?.boolValue ?? false,
                                            cause: d?[Key.cause]?.open() ?? .unknown("?"), vcpu: d?[Key.vcpu]?.intValue)
        case .memslotsChanged?: self = .memslotsChanged(generation: d?[Key.generation]?.uint64Value)
        case .vcpuStateChanged?:
            self = .vcpuStateChanged(index: d?[Key.index]?.intValue, state: d?[Key.state]?.open(), reason: d?[Key.reason]?.stringValue ?? "")
        case .faultInjected?: self = .faultInjected(InjectionReport(json: d ?? .null))
        case .guestReport?:
            self = .guestReport(vcpu: d?[Key.vcpu]?.intValue, kind: d?[Key.kind]?.open(), value: d?[Key.value]?.uint64Value ?? 0)
        case .eventsDropped?: self = .eventsDropped(count: d?[Key.count]?.uint64Value ?? 0, where: d?[Key.`where`]?.stringValue)
        case nil: self = .other(name: name, data: d)
        }
    }

    public var name: String {
        switch self {
        case .memoryFault: EventName.memoryFault.rawValue
        case .memoryAttributesChanged: EventName.memoryAttributesChanged.rawValue
        case .memslotsChanged: EventName.memslotsChanged.rawValue
        case .vcpuStateChanged: EventName.vcpuStateChanged.rawValue
        case .faultInjected: EventName.faultInjected.rawValue
        case .guestReport: EventName.guestReport.rawValue
        case .eventsDropped: EventName.eventsDropped.rawValue
        case .other(let n, _): n
        }
    }

    public var data: JSON? {
        switch self {
        case .memoryFault(let b): b.data
        case .memoryAttributesChanged(let gpa, let size, let p, let cause, let vcpu):
            .object([(Key.gpa, .u(gpa)), (Key.size, .u(size)), (Key.`private`, .bool(p)), (Key.cause, .e(cause)), (Key.vcpu, .opt(vcpu.map(JSON.i)))])
        case .memslotsChanged(let g): .object([(Key.generation, .opt(g.map(JSON.u)))])
        case .vcpuStateChanged(let i, let s, let r):
            .object([(Key.index, .opt(i.map(JSON.i))), (Key.state, .opt(s.map(JSON.e))), (Key.reason, .string(r))])
        case .faultInjected(let r): r.json
        case .guestReport(let v, let k, let value):
            .object([(Key.vcpu, .opt(v.map(JSON.i))), (Key.kind, .opt(k.map { JSON.e($0) })), (Key.value, .u(value))])
        case .eventsDropped(let c, let w):
            .object([(Key.count, .u(c))] + (w.map { [(Key.`where`, JSON.string($0))] } ?? []))
        case .other(_, let d): d
        }
    }

    /// The event as a message, `timestamp` from `wallNs` (ns since the Unix epoch) when given.
    public func message(wallNs: UInt64? = nil) -> JSON { QMP.event(name, data, wallNs: wallNs) }

    /// Whether the views' memslots or attributes are out of date after this event.
    public var changesLayout: (memslots: Bool, attributes: Bool) {
        switch self {
        case .memoryAttributesChanged: (true, true)
        case .memslotsChanged: (true, false)
        // A dropped event may have been a change of either.
        case .eventsDropped: (true, true)
        default: (false, false)
        }
    }
}
