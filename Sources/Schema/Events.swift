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
    public init?(message e: JSON) { self.init(reading: e) }

    /// The same from a parsed document, read in place (the client's event path).
    public init?(message d: JSONDocument) {
        guard let e = d.withRoot({ Event(reading: $0) }) else { return nil }
        self = e
    }

    static let names = WireNames<EventName>()

    init?<R: JSONReading>(reading e: R) {
        guard let name = e[Key.event]?.open(Self.names) else { return nil }
        self.init(name: name, data: e[Key.data])
    }

    public init(name: String, data d: JSON?) { self.init(name: Open<EventName>(name), data: d) }

    init<R: JSONReading>(name: Open<EventName>, data d: R?) {
        switch name {
        case .known(.memoryFault): self = .memoryFault(FaultBatch(reading: d))
        case .known(.memoryAttributesChanged):
            self = .memoryAttributesChanged(gpa: d?[Key.gpa]?.uint64Value ?? 0, size: d?[Key.size]?.uint64Value ?? 0,
                                            isPrivate: d?[Key.`private`]?.boolValue ?? false,
                                            cause: d?[Key.cause]?.schemaValue() ?? .unknown("?"), vcpu: d?[Key.vcpu]?.intValue)
        case .known(.memslotsChanged): self = .memslotsChanged(generation: d?[Key.generation]?.uint64Value)
        case .known(.vcpuStateChanged):
            self = .vcpuStateChanged(index: d?[Key.index]?.intValue, state: d?[Key.state]?.schemaValue(),
                                     reason: d?[Key.reason]?.stringValue ?? "")
        case .known(.faultInjected): self = .faultInjected(InjectionReport(reading: d))
        case .known(.guestReport):
            self = .guestReport(vcpu: d?[Key.vcpu]?.intValue, kind: d?[Key.kind]?.schemaValue(), value: d?[Key.value]?.uint64Value ?? 0)
        case .known(.eventsDropped): self = .eventsDropped(count: d?[Key.count]?.uint64Value ?? 0, where: d?[Key.`where`]?.stringValue)
        case .unknown(let n): self = .other(name: n, data: d?.json)
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
