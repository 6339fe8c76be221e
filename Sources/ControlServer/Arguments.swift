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

    mutating func optionalUInt64(_ name: String) throws(CommandError) -> UInt64? {
        guard let v = value(name), !v.isNull else { return nil }
        guard let u = v.uint64Value else { throw expects(name, "an unsigned 64-bit integer") }
        return u
    }

    mutating func uint64(_ name: String) throws(CommandError) -> UInt64 {
        guard let u = try optionalUInt64(name) else { throw missing(name) }
        return u
    }

    mutating func optionalInt(_ name: String, in range: ClosedRange<Int>) throws(CommandError) -> Int? {
        guard let v = value(name), !v.isNull else { return nil }
        guard let i = v.intValue, range.contains(i) else {
            throw expects(name, "an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return i
    }

    mutating func optionalBool(_ name: String) throws(CommandError) -> Bool? {
        guard let v = value(name), !v.isNull else { return nil }
        guard let b = v.boolValue else { throw expects(name, "a boolean") }
        return b
    }

    mutating func bool(_ name: String) throws(CommandError) -> Bool {
        guard let b = try optionalBool(name) else { throw missing(name) }
        return b
    }

    mutating func optionalEnum<E: RawRepresentable & CaseIterable>(_ name: String, _: E.Type) throws(CommandError) -> E?
    where E.RawValue == String {
        guard let v = value(name), !v.isNull else { return nil }
        guard let s = v.stringValue, let e = E(rawValue: s) else {
            throw expects(name, "one of " + E.allCases.map { "'\($0.rawValue)'" }.joined(separator: ", "))
        }
        return e
    }

    mutating func enumeration<E: RawRepresentable & CaseIterable>(_ name: String, _ t: E.Type) throws(CommandError) -> E
    where E.RawValue == String {
        guard let e = try optionalEnum(name, t) else { throw missing(name) }
        return e
    }

    mutating func optionalStringList(_ name: String) throws(CommandError) -> [String]? {
        guard let v = value(name), !v.isNull else { return nil }
        guard let a = v.arrayValue else { throw expects(name, "a list of strings") }
        var out: [String] = []
        for e in a {
            guard let s = e.stringValue else { throw expects(name, "a list of strings") }
            out.append(s)
        }
        return out
    }

    /// Refuses any member the command did not read.
    func finish() throws(CommandError) {
        if let extra = members.first(where: { !used.contains($0.0) }) {
            throw CommandError(.genericError, "Parameter '\(extra.0)' is unexpected")
        }
    }
}
