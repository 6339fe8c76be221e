import Foundation
import Synchronization

/// A connection to libvirt (`qemu:///system` by default), read-write: QEMU monitor passthrough needs it.
public final class LibvirtConnection: @unchecked Sendable {
    // @unchecked: libvirt's connection objects are thread-safe; `pointer` is set once.
    public let uri: String
    let api: LibvirtAPI
    let pointer: OpaquePointer

    public static let defaultURI = "qemu:///system"

    /// Opens `uri`. Where only a read-only connection is possible (the caller may not write to libvirt's socket),
    /// that is the error, by name: the monitor passthrough is read-write only.
    public init(uri: String = defaultURI) throws(LibvirtError) {
        api = try LibvirtAPI.shared()
        self.uri = uri
        guard let c = api.connectOpen(uri) else {
            let e = api.lastError("cannot connect to libvirt at \(uri)")
            if let ro = api.connectOpenReadOnly(uri) {
                _ = api.connectClose(ro)
                throw LibvirtError(.readOnly, "libvirt at \(uri) allows this user a read-only connection only, and QEMU monitor passthrough needs read-write (run as root, or as a member of libvirt's socket group): \(e.description)", code: e.code)
            }
            if e.kind == .noDaemon {
                throw LibvirtError(.noDaemon, "\(e.description) (is libvirtd running? start it with: virtlogd --daemon; libvirtd --daemon)", code: e.code)
            }
            throw e
        }
        pointer = c
        // A dead daemon is noticed (the event loop's keepalive) rather than waited on for ever.
        _ = api.setKeepAlive(c, 5, 3)
    }

    deinit { _ = api.connectClose(pointer) }

    /// Whether the daemon runs on this host (`qemu:///system`, not `qemu+ssh://host/system`): only then is QEMU's
    /// pid one of this host's processes.
    public var isLocal: Bool { LibvirtURI.isLocal(uri) }

    /// A domain by name or UUID; it must be running (the views read its QEMU).
    public func domain(_ nameOrUUID: String) throws(LibvirtError) -> LibvirtDomain {
        let looksLikeUUID = nameOrUUID.count == 36 && nameOrUUID.filter({ $0 == "-" }).count == 4
        var d = looksLikeUUID ? api.lookupByUUIDString(pointer, nameOrUUID) : nil
        if d == nil { d = api.lookupByName(pointer, nameOrUUID) }
        guard let d else {
            let e = api.lastError("no libvirt domain \(nameOrUUID) at \(uri)")
            throw e.kind == .other ? LibvirtError(.noSuchDomain, e.description, code: e.code) : e
        }
        let domain = LibvirtDomain(connection: self, pointer: d)
        guard domain.isActive else {
            throw LibvirtError(.notRunning, "libvirt domain \(domain.name) is not running (\(domain.state.description)): start it with virsh start \(domain.name)")
        }
        return domain
    }

    /// Every running domain: name, UUID.
    public func runningDomains() -> [(name: String, uuid: String)] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = api.listAllDomains(pointer, &list, 1)   // VIR_CONNECT_LIST_DOMAINS_ACTIVE
        guard n > 0, let list else { return [] }
        defer { free(list) }
        return (0..<Int(n)).compactMap { i in
            guard let d = list[i] else { return nil }
            let domain = LibvirtDomain(connection: self, pointer: d)
            return (domain.name, domain.uuid)
        }
    }
}

/// A domain's state as libvirt keeps it (`virDomainGetState`).
public struct LibvirtState: Sendable, Equatable, CustomStringConvertible {
    public var state: Int32
    public var reason: Int32
    static let names = ["no state", "running", "blocked", "paused", "shutdown", "shut off", "crashed", "pmsuspended"]
    /// The reasons libvirt gives for running and paused, the two states an attached domain is seen in.
    static let running = ["unknown", "booted", "migrated", "restored", "from snapshot", "unpaused", "migration canceled",
                          "save canceled", "wakeup", "crashed", "post-copy"]
    static let paused = ["unknown", "user", "migration", "save", "dump", "ioerror", "watchdog", "from snapshot",
                         "shutting down", "snapshot", "crashed", "starting up", "post-copy", "post-copy failed"]
    public var name: String { state >= 0 && Int(state) < Self.names.count ? Self.names[Int(state)] : "state \(state)" }
    public var reasonName: String {
        let table = state == 1 ? Self.running : state == 3 ? Self.paused : []
        return reason >= 0 && Int(reason) < table.count ? table[Int(reason)] : "reason \(reason)"
    }
    public var description: String { "\(name), \(reasonName)" }
    public var isPaused: Bool { state == 3 }
}

/// One libvirt domain: its facts, its QEMU monitor through libvirt (libvirt keeps the monitor; vmscope's commands
/// and events pass through it), and the state changes libvirt has an API for.
public final class LibvirtDomain: @unchecked Sendable {
    // @unchecked: libvirt's domain objects are thread-safe; the event queue is behind its Mutex.
    public let connection: LibvirtConnection
    let pointer: OpaquePointer
    private var api: LibvirtAPI { connection.api }

    init(connection: LibvirtConnection, pointer: OpaquePointer) {
        self.connection = connection
        self.pointer = pointer
    }

    deinit {
        if let id = eventCallback { _ = api.monitorEventDeregister(connection.pointer, id) }
        _ = api.domainFree(pointer)
    }

    public var name: String { api.getName(pointer).map { String(cString: $0) } ?? "?" }
    public var uuid: String {
        var buf = [CChar](repeating: 0, count: 37)
        return api.getUUIDString(pointer, &buf) == 0 ? String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
    }
    public var isActive: Bool { api.isActive(pointer) == 1 }
    public var state: LibvirtState {
        var s: Int32 = -1, r: Int32 = -1
        _ = api.getState(pointer, &s, &r, 0)
        return LibvirtState(state: s, reason: r)
    }
    /// The live domain XML (`virDomainGetXMLDesc`, flags 0: no secure parts).
    public func xml() throws(LibvirtError) -> String {
        guard let p = api.getXMLDesc(pointer, 0) else { throw api.lastError("the domain XML of \(name)") }
        defer { free(p) }
        return String(cString: p)
    }

    /// QEMU's pid, from libvirt's pid file for the domain (`/run/libvirt/qemu/NAME.pid`, the system driver's).
    public var qemuPid: Int32? {
        guard let text = try? String(contentsOfFile: "/run/libvirt/qemu/\(name).pid", encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else { return nil }
        return pid
    }

    /// One QMP command through libvirt's monitor (`virDomainQemuMonitorCommand`); returns QEMU's whole reply, as text.
    public func monitorCommand(_ json: String) throws(LibvirtError) -> String {
        var result: UnsafeMutablePointer<CChar>?
        guard api.monitorCommand(pointer, json, &result, 0) == 0, let result else {
            throw api.lastError("QEMU monitor command through libvirt")
        }
        defer { free(result) }
        return String(cString: result)
    }

    public func suspend() throws(LibvirtError) { if api.suspend(pointer) != 0 { throw api.lastError("virDomainSuspend \(name)") } }
    public func resume() throws(LibvirtError) { if api.resume(pointer) != 0 { throw api.lastError("virDomainResume \(name)") } }
    public func injectNMI() throws(LibvirtError) { if api.injectNMI(pointer, 0) != 0 { throw api.lastError("virDomainInjectNMI \(name)") } }

    // MARK: QMP events, as libvirt passes them on

    /// One QEMU event as libvirt passes it on: its name, its data as QEMU's JSON text (nil: none), its time.
    public struct MonitorEvent: Sendable {
        public var name: String
        public var data: String?
        public var wallNs: UInt64
    }

    /// QEMU's events for this domain (`virConnectDomainQemuMonitorEventRegister`), oldest first, at most
    /// `eventLimit` waiting (the rest counted).
    private final class Events: Sendable {
        let queue = Mutex<(items: [MonitorEvent], dropped: UInt64)>(([], 0))
    }
    private let events = Events()
    private var eventCallback: Int32?
    public static let eventLimit = 4096

    /// Starts passing QEMU's events on (once).
    public func receiveEvents() throws(LibvirtError) {
        guard eventCallback == nil else { return }
        let opaque = Unmanaged.passRetained(events).toOpaque()
        let id = api.monitorEventRegister(connection.pointer, pointer, nil, { _, _, event, seconds, micros, details, opaque in
            guard let opaque, let event else { return }
            let box = Unmanaged<Events>.fromOpaque(opaque).takeUnretainedValue()
            let wallNs = UInt64(max(0, seconds)).multipliedReportingOverflow(by: 1_000_000_000).partialValue &+ UInt64(micros % 1_000_000) * 1000
            let message = MonitorEvent(name: String(cString: event), data: details.map { String(cString: $0) }, wallNs: wallNs)
            box.queue.withLock { q in
                if q.items.count < LibvirtDomain.eventLimit { q.items.append(message) } else { q.dropped &+= 1 }
            }
        }, opaque, { opaque in
            if let opaque { Unmanaged<Events>.fromOpaque(opaque).release() }
        }, 0)
        guard id >= 0 else {
            Unmanaged<Events>.fromOpaque(opaque).release()
            throw api.lastError("QEMU events through libvirt")
        }
        eventCallback = id
    }

    /// The events received since the last call, and how many were dropped for want of room.
    public func takeEvents() -> (events: [MonitorEvent], dropped: UInt64) {
        events.queue.withLock { q in
            defer { q = ([], 0) }
            return (q.items, q.dropped)
        }
    }
}

public enum LibvirtURI {
    /// `qemu:///system`, not `qemu+ssh://host/system` nor `qemu://host/system`.
    public static func isLocal(_ uri: String) -> Bool {
        guard let r = uri.range(of: "://") else { return false }
        return !uri[..<r.lowerBound].contains("+") && uri[r.upperBound...].hasPrefix("/")
    }
}
