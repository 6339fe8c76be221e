/// The control protocol's message shapes (QMP framing; see docs/control-protocol.md).
public enum QMP {
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
            ("qemu", .object([("major", .i(version.major)), ("minor", .i(version.minor)), ("micro", .i(version.micro))])),
            ("package", .string(package)),
        ])
    }

    public static var greeting: JSON {
        .object([
            ("QMP", .object([("version", versionObject), ("capabilities", .array([]))])),
            ("vmscope", .object([("protocol", .i(protocolVersion))])),
        ])
    }

    public static func reply(_ value: JSON, id: JSON?) -> JSON {
        var m: [(String, JSON)] = [("return", value)]
        if let id { m.append(("id", id)) }
        return .object(m)
    }

    /// An error reply; `errno` (vmscope's extension, named as in fault records) where a failed system call is the cause.
    public static func error(_ c: ErrorClass, _ desc: String, errno: String? = nil, id: JSON?) -> JSON {
        var e: [(String, JSON)] = [("class", .string(c.rawValue)), ("desc", .string(desc))]
        if let errno { e.append((FaultRecord.Member.errno.name, .string(errno))) }
        var m: [(String, JSON)] = [("error", .object(e))]
        if let id { m.append(("id", id)) }
        return .object(m)
    }

    /// An event; `wallNs` is nanoseconds since the Unix epoch (no `timestamp` without it), no `data` without data.
    public static func event(_ name: String, _ data: JSON?, wallNs: UInt64?) -> JSON {
        var m: [(String, JSON)] = [("event", .string(name))]
        if let data { m.append(("data", data)) }
        if let wallNs {
            m.append(("timestamp", .object([("seconds", .u(wallNs / 1_000_000_000)), ("microseconds", .u(wallNs % 1_000_000_000 / 1000))])))
        }
        return .object(m)
    }

    /// A greeting as QEMU sends it, from a `query-version` reply: for a QEMU reached without its greeting (through
    /// libvirt's monitor passthrough).
    public static func greeting(version: JSON) -> JSON { .object([("QMP", .object([("version", version)]))]) }

    /// A command message.
    public static func command(_ name: String, _ arguments: JSON?, id: JSON?) -> JSON {
        var m: [(String, JSON)] = [("execute", .string(name))]
        if let arguments { m.append(("arguments", arguments)) }
        if let id { m.append(("id", id)) }
        return .object(m)
    }

    /// The members a command message may have (`exec-oob` is named so its refusal can say why).
    public static let commandMembers: Set<String> = ["execute", "arguments", "id"]
    public static let outOfBandMember = "exec-oob"
    public static let idMember = "id"
    /// A message's `id` (any JSON value, echoed in its reply), if it has one.
    public static func id(of message: JSON) -> JSON? { message[idMember] }

    /// A message as the client and server tell them apart.
    public enum Message: Sendable, Equatable {
        case greeting(JSON)
        case command(name: String?, arguments: JSON?, id: JSON?)
        case reply(JSON, id: JSON?)
        case error(errorClass: String, desc: String, id: JSON?)
        case event(name: String, data: JSON?)
        case unknown(JSON)

        public init(_ m: JSON) {
            let id = m["id"]
            if let e = m["error"] {
                self = .error(errorClass: e["class"]?.stringValue ?? ErrorClass.genericError.rawValue, desc: e["desc"]?.stringValue ?? "", id: id)
            } else if let r = m["return"] {
                self = .reply(r, id: id)
            } else if let name = m["event"]?.stringValue {
                self = .event(name: name, data: m["data"])
            } else if m["execute"] != nil {
                self = .command(name: m["execute"]?.stringValue, arguments: m["arguments"], id: id)
            } else if m["QMP"] != nil {
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
            guard let version = g["QMP"]?["version"] else { return nil }
            package = version["package"]?.stringValue ?? ""
            vmscopeProtocol = g["vmscope"]?["protocol"]?.intValue
            let q = version["qemu"]
            major = q?["major"]?.intValue; minor = q?["minor"]?.intValue; micro = q?["micro"]?.intValue
        }
    }
}
