/// The control protocol's message shapes (QMP framing; see docs/control-protocol.md).
public enum QMP {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let id = "id", error = "error", `class` = "class", desc = "desc", `return` = "return"
        static let event = "event", data = "data", execute = "execute", arguments = "arguments", qmp = "QMP"
        static let version = "version", package = "package", vmscope = "vmscope", `protocol` = "protocol"
        static let qemu = "qemu", major = "major", minor = "minor", micro = "micro", capabilities = "capabilities"
        static let timestamp = "timestamp", seconds = "seconds", microseconds = "microseconds", execOob = "exec-oob"
    }

    /// Error classes: QMP's two, plus vmscope's.
    public enum ErrorClass: String, Sendable, CaseIterable {
        case genericError = "GenericError"
        case commandNotFound = "CommandNotFound"
        case permissionDenied = "PermissionDenied"
        case invalidRange = "InvalidRange"
        case unsupported = "Unsupported"
    }

    public static let protocolVersion = 1
    public static let version = (major: 0, minor: 1, micro: 0)
    public static let package = "vmscope 0.1.0"
    /// Lines longer than this (without the newline) are refused.
    public static let maxLine = 1 << 20

    public static var versionObject: JSON {
        .object([
            (Key.qemu, .object([(Key.major, .i(version.major)), (Key.minor, .i(version.minor)), (Key.micro, .i(version.micro))])),
            (Key.package, .string(package)),
        ])
    }

    public static var greeting: JSON {
        .object([
            (Key.qmp, .object([(Key.version, versionObject), (Key.capabilities, .array([]))])),
            (Key.vmscope, .object([(Key.`protocol`, .i(protocolVersion))])),
        ])
    }

    public static func reply(_ value: JSON, id: JSON?) -> JSON {
        var m: [(String, JSON)] = [(Key.`return`, value)]
        if let id { m.append((Key.id, id)) }
        return .object(m)
    }

    /// An error reply; `errno` (vmscope's extension, named as in fault records) where a failed system call is the cause.
    public static func error(_ c: ErrorClass, _ desc: String, errno: String? = nil, id: JSON?) -> JSON {
        var e: [(String, JSON)] = [(Key.`class`, .string(c.rawValue)), (Key.desc, .string(desc))]
        if let errno { e.append((FaultRecord.Member.errno.name, .string(errno))) }
        var m: [(String, JSON)] = [(Key.error, .object(e))]
        if let id { m.append((Key.id, id)) }
        return .object(m)
    }

    /// An event; `wallNs` is nanoseconds since the Unix epoch (no `timestamp` without it), no `data` without data.
    public static func event(_ name: String, _ data: JSON?, wallNs: UInt64?) -> JSON {
        var m: [(String, JSON)] = [(Key.event, .string(name))]
        if let data { m.append((Key.data, data)) }
        if let wallNs {
            m.append((Key.timestamp, .object([(Key.seconds, .u(wallNs / 1_000_000_000)), (Key.microseconds, .u(wallNs % 1_000_000_000 / 1000))])))
        }
        return .object(m)
    }

    /// A greeting as QEMU sends it, from a `query-version` reply: for a QEMU reached without its greeting (through
    /// libvirt's monitor passthrough).
    public static func greeting(version: JSON) -> JSON { .object([(Key.qmp, .object([(Key.version, version)]))]) }

    /// A command message.
    public static func command(_ name: String, _ arguments: JSON?, id: JSON?) -> JSON {
        var m: [(String, JSON)] = [(Key.execute, .string(name))]
        if let arguments { m.append((Key.arguments, arguments)) }
        if let id { m.append((Key.id, id)) }
        return .object(m)
    }

    /// The members a command message may have (`exec-oob` is named so its refusal can say why).
    public static let commandMembers: Set<String> = [Key.execute, Key.arguments, Key.id]
    public static let outOfBandMember = Key.execOob
    /// A message's `id` (any JSON value, echoed in its reply), if it has one.
    public static func id(of message: JSON) -> JSON? { message[Key.id] }

    /// A message as the client and server tell them apart.
    public enum Message: Sendable, Equatable {
        case greeting(JSON)
        case command(name: String?, arguments: JSON?, id: JSON?)
        case reply(JSON, id: JSON?)
        case error(errorClass: String, desc: String, id: JSON?)
        case event(name: String, data: JSON?)
        case unknown(JSON)

        public init(_ m: JSON) {
            let id = m[Key.id]
            if let e = m[Key.error] {
                self = .error(errorClass: e[Key.`class`]?.stringValue ?? ErrorClass.genericError.rawValue, desc: e[Key.desc]?.stringValue ?? "", id: id)
            } else if let r = m[Key.`return`] {
                self = .reply(r, id: id)
            } else if let name = m[Key.event]?.stringValue {
                self = .event(name: name, data: m[Key.data])
            } else if m[Key.execute] != nil {
                self = .command(name: m[Key.execute]?.stringValue, arguments: m[Key.arguments], id: id)
            } else if m[Key.qmp] != nil {
                self = .greeting(m)
            } else {
                self = .unknown(m)
            }
        }
    }

    /// What a greeting says of its server: QEMU's version and package, and vmscope's protocol version if it is one.
    public struct Greeting: Sendable, Equatable {
        public var major: Int?, minor: Int?, micro: Int?
        public var package: String
        public var vmscopeProtocol: Int?
        public init?(_ g: JSON) {
            guard let version = g[Key.qmp]?[Key.version] else { return nil }
            package = version[Key.package]?.stringValue ?? ""
            vmscopeProtocol = g[Key.vmscope]?[Key.`protocol`]?.intValue
            let q = version[Key.qemu]
            major = q?[Key.major]?.intValue; minor = q?[Key.minor]?.intValue; micro = q?[Key.micro]?.intValue
        }
    }
}
