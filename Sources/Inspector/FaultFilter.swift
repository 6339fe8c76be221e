import ControlProtocol

/// The fault stream's filter: `vcpu=N access=read|write|exec|unknown source=vmm|kernel gpa=A-B`.
public struct FaultFilter: Sendable, Equatable {
    public var vcpu: Int?
    public var access: FaultAccess?
    public var source: FaultSource?
    public var gpaRange: ClosedRange<UInt64>?
    public var text = ""

    public init() {}

    public struct ParseError: Error, Equatable { public var message: String }

    /// The keys: the fault record members they test, by the record's own names.
    enum Key: RawRepresentable, CaseIterable {
        case vcpu, access, source, gpa
        var member: FaultRecord.Member {
            switch self {
            case .vcpu: .vcpu
            case .access: .access
            case .source: .source
            case .gpa: .gpa
            }
        }
        var rawValue: String { member.name }
        init?(rawValue: String) {
            guard let k = Self.allCases.first(where: { $0.rawValue == rawValue }) else { return nil }
            self = k
        }
    }

    public static func parse(_ text: String) -> Result<FaultFilter, ParseError> {
        var f = FaultFilter()
        f.text = text.trimmingCharacters(in: " ")
        for word in text.split(separator: " ") {
            let kv = word.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { return .failure(ParseError(message: "filter: '\(word)' is not key=value")) }
            // The filter's keys are the record members they test.
            switch FaultFilter.Key(rawValue: kv[0]) {
            case .vcpu?:
                guard let n = Int(kv[1]), n >= 0 else { return .failure(ParseError(message: "filter: vcpu wants a number")) }
                f.vcpu = n
            case .access?:
                guard let a = FaultAccess(rawValue: kv[1]) else { return .failure(ParseError(message: "filter: access is \(FaultAccess.choices)")) }
                f.access = a
            case .source?:
                guard let s = FaultSource(rawValue: kv[1]) else { return .failure(ParseError(message: "filter: source is \(FaultSource.choices)")) }
                f.source = s
            case .gpa?:
                let ends = kv[1].split(separator: "-").map { Fmt.parseSize(String($0)) }
                guard ends.count == 2, let a = ends[0], let b = ends[1], a <= b else {
                    return .failure(ParseError(message: "filter: gpa wants START-END, e.g. gpa=0x100000-0x200000"))
                }
                f.gpaRange = a...b
            default:
                return .failure(ParseError(message: "filter: unknown key '\(kv[0])' (vcpu, access, source, gpa)"))
            }
        }
        return .success(f)
    }

    public func matches(_ r: FaultRecord) -> Bool {
        if let vcpu, r.vcpu != vcpu { return false }
        if let access, r.access != access { return false }
        if let source, r.source != source { return false }
        if let gpaRange, !gpaRange.contains(r.gpa) { return false }
        return true
    }

    public var isEmpty: Bool { vcpu == nil && access == nil && source == nil && gpaRange == nil }
}
