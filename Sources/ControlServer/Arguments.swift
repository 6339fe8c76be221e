import ControlProtocol

/// A refused command: the error class and text of the reply.
struct CommandError: Error {
    var errorClass: QMP.ErrorClass
    var desc: String
    init(_ c: QMP.ErrorClass, _ desc: String) { errorClass = c; self.desc = desc }
}

/// A command's `arguments`, read member by member; `finish()` refuses members nobody asked for.
struct Arguments {
    private let members: [(String, JSON)]
    private var used: Set<String> = []

    init(_ value: JSON?) throws(CommandError) {
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

    mutating func optionalUInt64(_ name: String) throws(CommandError) -> UInt64? {
        try optional(name, "an unsigned 64-bit integer") { $0.uint64Value }
    }

    mutating func uint64(_ name: String) throws(CommandError) -> UInt64 {
        guard let u = try optionalUInt64(name) else { throw missing(name) }
        return u
    }

    mutating func optionalInt(_ name: String, in range: ClosedRange<Int>) throws(CommandError) -> Int? {
        try optional(name, "an integer in \(range.lowerBound)...\(range.upperBound)") { $0.intValue.flatMap { range.contains($0) ? $0 : nil } }
    }

    mutating func optionalBool(_ name: String) throws(CommandError) -> Bool? {
        try optional(name, "a boolean") { $0.boolValue }
    }

    mutating func bool(_ name: String) throws(CommandError) -> Bool {
        guard let b = try optionalBool(name) else { throw missing(name) }
        return b
    }

    mutating func optionalEnum<E: RawRepresentable & CaseIterable>(_ name: String, _: E.Type) throws(CommandError) -> E?
    where E.RawValue == String {
        try optional(name, "one of " + E.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", ")) { $0.stringValue.flatMap(E.init) }
    }

    mutating func enumeration<E: RawRepresentable & CaseIterable>(_ name: String, _ t: E.Type) throws(CommandError) -> E
    where E.RawValue == String {
        guard let e = try optionalEnum(name, t) else { throw missing(name) }
        return e
    }

    mutating func optionalStringList(_ name: String) throws(CommandError) -> [String]? {
        try optional(name, "a list of strings") { v in
            guard let a = v.arrayValue else { return nil }
            let strings = a.compactMap(\.stringValue)
            return strings.count == a.count ? strings : nil
        }
    }

    /// Refuses any member the command did not read.
    func finish() throws(CommandError) {
        if let extra = members.first(where: { !used.contains($0.0) }) {
            throw CommandError(.genericError, "Parameter '\(extra.0)' is unexpected")
        }
    }
}
