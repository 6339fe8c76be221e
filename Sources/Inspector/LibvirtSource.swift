import ControlProtocol
import Libvirt

/// A libvirt-managed QEMU (`attach libvirt:DOMAIN`): libvirt keeps QEMU's monitor, and vmscope's QMP commands and
/// QEMU's events pass through it (`virDomainQemuMonitorCommand`, `virConnectDomainQemuMonitorEventRegister`), so
/// the views are a direct QEMU attach's (`QEMUPoller`, polled at the same budget: a command through libvirt costs
/// about 4 ms, and the spacing grows with it). Beside them, what libvirt knows better: the domain's name, UUID,
/// state and reason, and from its XML its vCPU pinning, memory backing, launch security and devices.
///
/// State changes go through libvirt's own API (`virDomainSuspend`/`Resume`, `virDomainInjectNMI`), so libvirt's
/// view of the domain stays true; nothing that changes QEMU's state is sent through the passthrough. Every
/// passthrough command, queries included, makes libvirt mark the domain tainted ("custom-monitor"): README.
public final class LibvirtSource: VMSource {
    public let domain: LibvirtDomain
    public private(set) var qemu: QEMUPoller
    public let facts: DomainFacts
    /// QEMU's pid (libvirt's pid file for the domain), on a local connection.
    public let qemuPid: Int?
    private var started = false
    private var lastStateRead: UInt64 = 0
    private var lastFailure: UInt64 = 0
    private var notice: (text: String, isError: Bool)?
    private var broken: String?
    private var eventsDropped: UInt64 = 0

    /// The domain's facts and QEMU's version (the greeting a direct attach reads): errors by name.
    public init(domain: LibvirtDomain) throws(LibvirtError) {
        self.domain = domain
        let version = try Self.command(domain, "query-version", nil)
        qemu = QEMUPoller(greeting: QMP.greeting(version: version))
        facts = (try? domain.xml()).map(DomainFacts.init(xml:)) ?? DomainFacts()
        qemuPid = domain.connection.isLocal ? domain.qemuPid.map(Int.init) : nil
        try domain.receiveEvents()
    }

    /// One QMP command through libvirt: its `return`, or QEMU's refusal, or libvirt's error, thrown.
    static func command(_ domain: LibvirtDomain, _ name: String, _ arguments: JSON?) throws(LibvirtError) -> JSON {
        let text = try domain.monitorCommand(QMP.command(name, arguments, id: nil).serialized)
        guard let reply = try? JSON.parse(text) else { throw LibvirtError(.other, "QEMU's reply to \(name) through libvirt is not JSON") }
        switch QMP.Message(reply) {
        case .reply(let value, _): return value
        case .error(let errorClass, let desc, _): throw LibvirtError(.other, "QEMU refused \(name): \(desc) (\(errorClass))")
        default: throw LibvirtError(.other, "QEMU's reply to \(name) through libvirt is not a QMP reply")
        }
    }

    var execute: QEMUPoller.Execute {
        let d = domain
        return { name, arguments in try Self.command(d, name, arguments) }
    }

    /// What the views say of the domain beside its state: its UUID and its XML's facts.
    var factsLine: String { "UUID \(domain.uuid); \(facts.summary)" }
    /// What libvirt says of the domain: UUID, state and reason, then its XML's facts (the note on attach).
    public var libvirtLine: String { "UUID \(domain.uuid), \(domain.state.description); \(facts.summary)" }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        var changed = false
        let (events, dropped) = domain.takeEvents()
        for event in events {
            // As QEMU sent it: libvirt passes the name, time and data apart.
            let e = QMP.event(event.name, event.data.flatMap { try? JSON.parse($0) }, wallNs: event.wallNs)
            model.apply(event: e, nowNs: nowNs)
            qemu.apply(event: e, model: &model)
            changed = true
        }
        if dropped > 0 {
            eventsDropped &+= dropped
            notice = ("\(eventsDropped) QEMU events through libvirt dropped (more than \(LibvirtDomain.eventLimit) waited)", true)
        }
        // After a failure, retried once a second (the domain stopped, or libvirtd went away and came back).
        if broken != nil && nowNs &- lastFailure < 1_000_000_000 { return changed }
        do {
            if !started {
                try qemu.start(execute, model: &model, nowNs: nowNs, pid: qemuPid)
                started = true
                model.vm.name = domain.name
                changed = true
            } else {
                let stateNow = qemu.wantsRefresh
                if try qemu.poll(execute, model: &model, nowNs: nowNs) { changed = true }
                if stateNow { lastStateRead = 0 }
            }
            if nowNs &- lastStateRead >= 1_000_000_000 {
                lastStateRead = nowNs
                let state = domain.state.description
                if model.vm.libvirtState != state { model.vm.libvirtState = state; changed = true }
                if model.vm.libvirtFacts == nil { model.vm.libvirtFacts = factsLine; changed = true }
            }
            if let why = broken {
                notice = ("libvirt domain \(domain.name) answers again (was: \(why))", false)
                broken = nil
            }
            let peer = "libvirt \(domain.connection.uri)"
            if model.connection != .connected(peer) { model.connection = .connected(peer); changed = true }
        } catch {
            lastFailure = nowNs
            let why = "\(error)"
            if broken != why {
                broken = why
                model.connection = .disconnected(why)
                changed = true
            }
        }
        return changed
    }

    /// A model filled now, without a terminal (`vmscope snapshot libvirt:DOMAIN`).
    public func capture(nowNs: UInt64) throws -> InspectorModel {
        var model = InspectorModel()
        try qemu.start(execute, model: &model, nowNs: nowNs, pid: qemuPid)
        model.vm.name = domain.name
        model.vm.libvirtState = domain.state.description
        model.vm.libvirtFacts = factsLine
        model.connection = .connected("libvirt \(domain.connection.uri)")
        return model
    }

    public func refusal(_ action: InspectorAction) -> String? {
        switch action {
        case .vcpu(_, .pause), .vcpu(_, .resume), .inject(.nmi, _, _, _): return nil
        default:
            if case .refuse(let why) = qemu.translate(action) { return why }
            return nil
        }
    }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        defer { qemu.refreshSoon() }
        switch action {
        case .vcpu(_, .pause):
            try domain.suspend()
            return .done(detail: "", description: "suspend the domain (virDomainSuspend: libvirt pauses every vCPU and records it)")
        case .vcpu(_, .resume):
            try domain.resume()
            return .done(detail: "", description: "resume the domain (virDomainResume)")
        case .inject(.nmi, _, _, _):
            try domain.injectNMI()
            return .done(detail: "", description: "inject an NMI (virDomainInjectNMI: every vCPU)")
        default:
            switch qemu.translate(action) {
            case .refuse(let why): throw SourceRefusal(why)
            case .readMemory(let gpa, let size): return .bytes(try qemu.readMemory(execute, gpa: gpa, size: size))
            case .run:
                // Whatever else QEMU's commands would change, libvirt would not know of: not sent.
                throw SourceRefusal("libvirt has no API for that, and a QMP command behind its back would leave its view of the domain wrong")
            }
        }
    }

    public func takeNotice() -> (text: String, isError: Bool)? {
        defer { notice = nil }
        return notice
    }

    public var recordingSocket: Result<String, SourceRefusal> {
        .failure(SourceRefusal("a libvirt domain is recorded from what the inspector sees of it (R while attached)"))
    }
}

extension LibvirtSource: TracedPeer {
    public var isConnected: Bool { started && broken == nil }
    public var peerPID: Int? { qemuPid }
    public var isQEMU: Bool { true }
    /// libvirt's connection closes with the last reference to the domain.
    public func close() {}
}
