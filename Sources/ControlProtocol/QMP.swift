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

    public static func error(_ c: ErrorClass, _ desc: String, id: JSON?) -> JSON {
        var m: [(String, JSON)] = [("error", .object([("class", .string(c.rawValue)), ("desc", .string(desc))]))]
        if let id { m.append(("id", id)) }
        return .object(m)
    }

    /// An event; `wallNs` is nanoseconds since the Unix epoch.
    public static func event(_ name: String, _ data: JSON, wallNs: UInt64) -> JSON {
        .object([
            ("event", .string(name)),
            ("data", data),
            ("timestamp", .object([("seconds", .u(wallNs / 1_000_000_000)), ("microseconds", .u(wallNs % 1_000_000_000 / 1000))])),
        ])
    }
}
