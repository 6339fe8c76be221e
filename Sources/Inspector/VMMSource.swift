import Foundation
import ControlProtocol

/// A vmscope VMM over its control socket: events as they come, memslots and attributes re-read when an event says
/// they changed, the vCPUs every `vcpuIntervalNs`. Every action is one typed command, one round trip; the VMM itself refuses what
/// it was not started to allow, with its reason.
public final class VMMSource: ClientBackedSource {
    public let client: ControlClient
    public var vcpuIntervalNs: UInt64 = 100_000_000
    public var timeoutMs: Int32 = 5000
    private var lastVCPUQuery: UInt64 = 0
    private var lastPaintHint: UInt64 = 0
    private var clientDrops: UInt64 = 0

    public init(client: ControlClient) { self.client = client }

    /// The VM's facts (`query-vm`), once after connecting.
    public func start(_ model: inout InspectorModel) throws(ControlClientError) {
        model.apply(vm: try client.run(QueryVM(), timeoutMs: timeoutMs))
        model.memslotsStale = true
        model.attributesStale = true
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        (try? pollThrowing(&model, nowNs: nowNs)) ?? true
    }

    /// `poll`, with a broken connection thrown (the reconnecting source above it handles it).
    func pollThrowing(_ model: inout InspectorModel, nowNs: UInt64) throws(ControlClientError) -> Bool {
        var changed = false
        var n = 0
        while n < 10_000, let e = client.nextItem(timeoutMs: 0) {
            model.apply(event: e.event, nowNs: nowNs)
            n += 1
        }
        if n > 0 { changed = true }
        // Events this client's own queue dropped (nobody took them in time): counted, and the views read again.
        let drops = client.eventsDropped
        if drops > clientDrops {
            model.apply(event: .eventsDropped(count: drops - clientDrops, where: "inspector"), nowNs: nowNs)
            clientDrops = drops
            changed = true
        }
        if !client.isConnected { throw .connection("the VMM went away") }
        if model.memslotsStale, let r = try query(QueryMemslots()) { model.apply(memslots: r); changed = true }
        if model.attributesStale, let r = try query(QueryMemoryAttributes()) { model.apply(attributes: r); changed = true }
        if nowNs &- lastVCPUQuery > vcpuIntervalNs, let r = try query(QueryVCPUs()) {
            let previous = model.vcpus
            model.apply(vcpus: r, intervalNs: lastVCPUQuery == 0 ? 1 : nowNs &- lastVCPUQuery)
            lastVCPUQuery = nowNs
            // Rates on screen move once a second even when nothing else does.
            if model.vcpus != previous || nowNs &- lastPaintHint > 900_000_000 { changed = true; lastPaintHint = nowNs }
        }
        return changed
    }

    /// A query's reply; nil when the VMM refused it (the views keep what they had), thrown when the connection broke.
    private func query<C: SchemaCommand>(_ c: C) throws(ControlClientError) -> C.Reply? {
        do { return try client.run(c, timeoutMs: timeoutMs) } catch {
            if case .command = error { return nil }
            throw error
        }
    }

    public func refusal(_ action: InspectorAction) -> String? { nil }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        let outcome: ActionOutcome
        switch action {
        case .convert(let gpa, let size, let to):
            let r = try client.run(SetMemoryAttributes(gpa: gpa, size: size, toPrivate: to == .private), timeoutMs: 10_000)
            outcome = .done(detail: " in \(r.durationNs / 1000) µs")
        case .inject(let kind, let vcpu, let gpa, let size):
            // Each kind takes what it needs: a vCPU (nmi), a vCPU and an address (mce), or a range.
            let command = switch kind {
            case .nmi: InjectFault(kind: kind, vcpu: vcpu)
            case .mce: InjectFault(kind: kind, vcpu: vcpu, gpa: gpa)
            case .discard, .revoke, .flip: InjectFault(kind: kind, gpa: gpa, size: size)
            }
            outcome = .done(detail: ": " + (try client.run(command, timeoutMs: 10_000)).detail)
        case .vcpu(let index, let a):
            try client.run(VCPUControl(index: index, action: a), timeoutMs: 10_000)
            outcome = .done(detail: "")
        case .setPolicy(let p):
            try client.run(SetFaultPolicy(policy: p), timeoutMs: 10_000)
            // The status bar says the policy in force from now on (query-vm is read once, at attach).
            model.vm.policy = p.rawValue
            outcome = .done(detail: "")
        case .readMemory(let gpa, let size):
            return .bytes(try client.run(ReadMemory(gpa: gpa, size: size, view: .auto), timeoutMs: 10_000).bytes)
        }
        // Nothing is marked stale here: what the action changed, the VMM's events say (logged before its reply),
        // and only that is read again (issue 30: an action is one round trip).
        return outcome
    }

    public var recordingSocket: Result<String, SourceRefusal> { .success(client.path) }
}
