import Foundation
import Synchronization

/// Why libvirt could not do something, by name where the caller can act on it.
public struct LibvirtError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// libvirt.so.0 or libvirt-qemu.so.0 is not installed.
        case notInstalled
        /// No daemon answers at the URI (libvirtd not running, or no such URI).
        case noDaemon
        case noSuchDomain
        case notRunning
        /// The connection is read-only (the caller may not write to libvirt's socket): QMP passthrough needs read-write.
        case readOnly
        /// libvirt's access control refused the call.
        case accessDenied
        case other
    }
    public var kind: Kind
    public var description: String
    /// libvirt's `virErrorNumber` (0 when the error is ours).
    public var code: Int32
    public init(_ kind: Kind, _ description: String, code: Int32 = 0) { self.kind = kind; self.description = description; self.code = code }
}

/// libvirt and libvirt-qemu, loaded with dlopen when first needed (the build needs no libvirt package).
final class LibvirtAPI: @unchecked Sendable {
    // @unchecked: function pointers, set once in init.
    typealias ConnectOpen = @convention(c) (UnsafePointer<CChar>?) -> OpaquePointer?
    typealias PointerCall = @convention(c) (OpaquePointer?) -> Int32
    typealias Lookup = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> OpaquePointer?
    typealias GetName = @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    typealias GetUUIDString = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>?) -> Int32
    typealias GetState = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?, UInt32) -> Int32
    typealias GetXMLDesc = @convention(c) (OpaquePointer?, UInt32) -> UnsafeMutablePointer<CChar>?
    typealias WithFlags = @convention(c) (OpaquePointer?, UInt32) -> Int32
    typealias GetLastError = @convention(c) () -> UnsafeMutableRawPointer?
    typealias ErrorHandler = @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Void
    typealias SetErrorFunc = @convention(c) (UnsafeMutableRawPointer?, ErrorHandler?) -> Void
    typealias ListAll = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafeMutablePointer<OpaquePointer?>?>?, UInt32) -> Int32
    typealias MonitorCommand = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?, UInt32) -> Int32
    typealias MonitorEvent = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafePointer<CChar>?, Int64, UInt32, UnsafePointer<CChar>?, UnsafeMutableRawPointer?) -> Void
    typealias FreeCallback = @convention(c) (UnsafeMutableRawPointer?) -> Void
    typealias MonitorEventRegister = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafePointer<CChar>?, MonitorEvent?, UnsafeMutableRawPointer?, FreeCallback?, UInt32) -> Int32
    typealias Deregister = @convention(c) (OpaquePointer?, Int32) -> Int32
    typealias EventCall = @convention(c) () -> Int32
    typealias SetKeepAlive = @convention(c) (OpaquePointer?, Int32, UInt32) -> Int32
    typealias IsReadOnly = @convention(c) (OpaquePointer?) -> Int32

    let connectOpen: ConnectOpen, connectOpenReadOnly: ConnectOpen, connectClose: PointerCall
    let lookupByName: Lookup, lookupByUUIDString: Lookup, domainFree: PointerCall
    let getName: GetName, getUUIDString: GetUUIDString, getState: GetState, getXMLDesc: GetXMLDesc
    let suspend: PointerCall, resume: PointerCall, injectNMI: WithFlags, isActive: PointerCall
    let getLastError: GetLastError, setErrorFunc: SetErrorFunc
    let listAllDomains: ListAll, setKeepAlive: SetKeepAlive
    let monitorCommand: MonitorCommand, monitorEventRegister: MonitorEventRegister, monitorEventDeregister: Deregister
    let eventRegisterDefaultImpl: EventCall, eventRunDefaultImpl: EventCall

    /// The Debian package that holds the libraries.
    static let package = "libvirt0"

    private init() throws(LibvirtError) {
        // VMSCOPE_LIBVIRT_LIBRARY: another build of libvirt (a path, or a name the loader finds).
        let library = ProcessInfo.processInfo.environment["VMSCOPE_LIBVIRT_LIBRARY"] ?? "libvirt.so.0"
        guard let core = dlopen(library, RTLD_NOW | RTLD_LOCAL) else {
            throw LibvirtError(.notInstalled, "libvirt is not installed (\(String(cString: dlerror()))): apt-get install \(Self.package)")
        }
        guard let qemu = dlopen("libvirt-qemu.so.0", RTLD_NOW | RTLD_LOCAL) else {
            throw LibvirtError(.notInstalled, "libvirt-qemu is not installed (\(String(cString: dlerror()))): apt-get install \(Self.package)")
        }
        func f<T>(_ h: UnsafeMutableRawPointer, _ name: String, _: T.Type) throws(LibvirtError) -> T {
            guard let p = dlsym(h, name) else { throw LibvirtError(.notInstalled, "this libvirt lacks \(name) (libvirt 1.2.3 or later is needed)") }
            return unsafeBitCast(p, to: T.self)
        }
        connectOpen = try f(core, "virConnectOpen", ConnectOpen.self)
        connectOpenReadOnly = try f(core, "virConnectOpenReadOnly", ConnectOpen.self)
        connectClose = try f(core, "virConnectClose", PointerCall.self)
        lookupByName = try f(core, "virDomainLookupByName", Lookup.self)
        lookupByUUIDString = try f(core, "virDomainLookupByUUIDString", Lookup.self)
        domainFree = try f(core, "virDomainFree", PointerCall.self)
        getName = try f(core, "virDomainGetName", GetName.self)
        getUUIDString = try f(core, "virDomainGetUUIDString", GetUUIDString.self)
        getState = try f(core, "virDomainGetState", GetState.self)
        getXMLDesc = try f(core, "virDomainGetXMLDesc", GetXMLDesc.self)
        suspend = try f(core, "virDomainSuspend", PointerCall.self)
        resume = try f(core, "virDomainResume", PointerCall.self)
        injectNMI = try f(core, "virDomainInjectNMI", WithFlags.self)
        isActive = try f(core, "virDomainIsActive", PointerCall.self)
        getLastError = try f(core, "virGetLastError", GetLastError.self)
        setErrorFunc = try f(core, "virSetErrorFunc", SetErrorFunc.self)
        listAllDomains = try f(core, "virConnectListAllDomains", ListAll.self)
        setKeepAlive = try f(core, "virConnectSetKeepAlive", SetKeepAlive.self)
        eventRegisterDefaultImpl = try f(core, "virEventRegisterDefaultImpl", EventCall.self)
        eventRunDefaultImpl = try f(core, "virEventRunDefaultImpl", EventCall.self)
        monitorCommand = try f(qemu, "virDomainQemuMonitorCommand", MonitorCommand.self)
        monitorEventRegister = try f(qemu, "virConnectDomainQemuMonitorEventRegister", MonitorEventRegister.self)
        monitorEventDeregister = try f(qemu, "virConnectDomainQemuMonitorEventDeregister", Deregister.self)
        // libvirt prints every error to stderr unless told otherwise: ours are returned, and said once, by name.
        setErrorFunc(nil, { _, _ in })
        // Events need libvirt's event loop, registered before any connection opens, run on a thread of its own.
        _ = eventRegisterDefaultImpl()
        let run = eventRunDefaultImpl
        let thread = Thread {
            // Its name in the kernel, as `nameCurrentThread` (ControlProtocol) gives vmscope's other threads.
            let fd = open("/proc/thread-self/comm", O_WRONLY)
            if fd >= 0 { _ = write(fd, "vmscope/libvirt", 15); close(fd) }
            while true { if run() < 0 { usleep(100_000) } }
        }
        thread.start()
    }

    private static let loaded = Mutex<Result<LibvirtAPI, LibvirtError>?>(nil)

    /// The loaded libraries (once per process), or what to install.
    static func shared() throws(LibvirtError) -> LibvirtAPI {
        let r = loaded.withLock { l -> Result<LibvirtAPI, LibvirtError> in
            if let l { return l }
            let r: Result<LibvirtAPI, LibvirtError>
            do throws(LibvirtError) { r = .success(try LibvirtAPI()) } catch { r = .failure(error) }
            l = r
            return r
        }
        return try r.get()
    }

    /// libvirt's last error on this thread, by name.
    func lastError(_ what: String) -> LibvirtError {
        guard let e = getLastError() else { return LibvirtError(.other, "\(what) failed (libvirt said nothing)") }
        let code = e.load(fromByteOffset: 0, as: Int32.self)
        let message = e.load(fromByteOffset: 8, as: UnsafePointer<CChar>?.self).map { String(cString: $0) } ?? "no message"
        let kind: LibvirtError.Kind = switch code {
        case 42: .noSuchDomain        // VIR_ERR_NO_DOMAIN
        case 55: .notRunning          // VIR_ERR_OPERATION_INVALID ("domain is not running")
        case 29: .readOnly            // VIR_ERR_OPERATION_DENIED (read-only connection)
        case 88: .accessDenied        // VIR_ERR_ACCESS_DENIED
        case 38, 5: .noDaemon         // VIR_ERR_SYSTEM_ERROR (socket), VIR_ERR_NO_CONNECT
        default: .other
        }
        if kind == .accessDenied {
            return LibvirtError(kind, "\(what): refused by libvirt's access control (access_drivers in libvirtd.conf, polkit's rules for this user): \(message)", code: code)
        }
        return LibvirtError(kind, "\(what): \(message)", code: code)
    }
}
