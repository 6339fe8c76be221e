/// A refused command: the error class and text of the reply.
public struct CommandError: Error, Sendable {
    public var errorClass: QMP.ErrorClass
    public var desc: String
    /// The symbolic errno (`EINVAL`) of the system call whose failure refused the command, where one did.
    public var errno: String?
    public init(_ c: QMP.ErrorClass, _ desc: String, errno: String? = nil) { errorClass = c; self.desc = desc; self.errno = errno }
}

/// A command's `arguments`, read member by member; `finish()` refuses members nobody asked for.
public struct Arguments {
    private let members: [(String, JSON)]
    private var used: Set<String> = []

    public init(_ value: JSON?) throws(CommandError) {
        switch value {
        case nil, .null?: members = []
        case .object(let m)?: members = m
        case let other?: throw CommandError(.genericError, "'arguments' must be an object, not \(other.typeName)")
        }
    }

    private mutating func value(_ name: String) -> JSON? {
        used.insert(name)
        return members.first { $0.0 == name }?.1
    }

    private func expects(_ name: String, _ what: String) -> CommandError {
        CommandError(.genericError, "Parameter '\(name)' expects \(what)")
    }

    private func missing(_ name: String) -> CommandError {
        CommandError(.genericError, "Parameter '\(name)' is missing")
    }

    /// The member `name` converted by `convert`; nil when absent or null; `what` names the type in the error.
    private mutating func optional<T>(_ name: String, _ what: String, _ convert: (JSON) -> T?) throws(CommandError) -> T? {
        guard let v = value(name), !v.isNull else { return nil }
        guard let t = convert(v) else { throw expects(name, what) }
        return t
    }

    public mutating func optionalUInt64(_ name: String) throws(CommandError) -> UInt64? {
        try optional(name, "an unsigned 64-bit integer") { $0.uint64Value }
    }

    public mutating func uint64(_ name: String) throws(CommandError) -> UInt64 {
        guard let u = try optionalUInt64(name) else { throw missing(name) }
        return u
    }

    public mutating func optionalInt(_ name: String, in range: ClosedRange<Int>) throws(CommandError) -> Int? {
        try optional(name, "an integer in \(range.lowerBound)...\(range.upperBound)") { $0.intValue.flatMap { range.contains($0) ? $0 : nil } }
    }

    public mutating func optionalBool(_ name: String) throws(CommandError) -> Bool? {
        try optional(name, "a boolean") { $0.boolValue }
    }

    public mutating func bool(_ name: String) throws(CommandError) -> Bool {
        guard let b = try optionalBool(name) else { throw missing(name) }
        return b
    }

    public mutating func optionalEnum<E: SchemaEnum>(_ name: String, _: E.Type = E.self) throws(CommandError) -> E? {
        try optional(name, "one of " + E.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")) { $0.stringValue.flatMap(E.init) }
    }

    public mutating func enumeration<E: SchemaEnum>(_ name: String, _ t: E.Type = E.self) throws(CommandError) -> E {
        guard let e = try optionalEnum(name, t) else { throw missing(name) }
        return e
    }

    public mutating func optionalStringList(_ name: String) throws(CommandError) -> [String]? {
        try optional(name, "a list of strings") { v in
            guard let a = v.arrayValue else { return nil }
            let strings = a.compactMap(\.stringValue)
            return strings.count == a.count ? strings : nil
        }
    }

    /// Refuses any member the command did not read.
    public func finish() throws(CommandError) {
        if let extra = members.first(where: { !used.contains($0.0) }) {
            throw CommandError(.genericError, "Parameter '\(extra.0)' is unexpected")
        }
    }
}
