import Foundation

/// The raw trace file's lines (`vmscope trace --save-raw`, docs in HostTracing's `RawTraceRecording`): a header with
/// the kernel's event layouts, then one line a record. The one place their member names are spelled.
public enum RawTraceFormat {
    public static let format = "vmscope-raw-trace"
    public static let version = 1

    enum Key: String { case format, version, kernel, header, events, id, fields, type, pid, cpu, data }
    /// A record's time has the member name fault records give theirs.
    static let timeKey = FaultRecord.Member.timeNs.name

    /// A field's offset and size in a record.
    public struct Field: Sendable, Equatable {
        public var offset: Int, size: Int
        public init(offset: Int, size: Int) { self.offset = offset; self.size = size }
        var json: JSON { .array([.int(Int64(offset)), .int(Int64(size))]) }
    }

    /// The header line: the kernel, the common header's `type` and `pid` fields, and each event's id and fields.
    public struct Header: Sendable, Equatable {
        public var kernel: String
        public var type: Field
        public var pid: Field
        public var events: [String: (id: Int, fields: [String: Field])]
        public init(kernel: String, type: Field, pid: Field, events: [String: (id: Int, fields: [String: Field])]) {
            self.kernel = kernel; self.type = type; self.pid = pid; self.events = events
        }
        public static func == (a: Header, b: Header) -> Bool { a.line == b.line }

        public var line: String {
            let evs: [(String, JSON)] = events.sorted { $0.key < $1.key }.map { name, e in
                (name, .object([(Key.id.rawValue, .int(Int64(e.id))),
                                (Key.fields.rawValue, .object(e.fields.sorted { $0.key < $1.key }.map { ($0.key, $0.value.json) }))]))
            }
            return JSON.object([
                (Key.format.rawValue, .string(RawTraceFormat.format)), (Key.version.rawValue, .int(Int64(RawTraceFormat.version))),
                (Key.kernel.rawValue, .string(kernel)),
                (Key.header.rawValue, .object([(Key.type.rawValue, type.json), (Key.pid.rawValue, pid.json)])),
                (Key.events.rawValue, .object(evs)),
            ]).serialized + "\n"
        }

        /// Reads a header line; a refusal says what is wrong (the caller adds the file and line).
        public init(json header: JSON) throws(FormatError) {
            guard header[Key.format.rawValue]?.stringValue == RawTraceFormat.format else {
                throw FormatError("not a \(RawTraceFormat.format) file")
            }
            guard let v = header[Key.version.rawValue]?.intValue, v == RawTraceFormat.version else {
                throw FormatError("format version \(header[Key.version.rawValue]?.serialized ?? "missing"); this vmscope reads version \(RawTraceFormat.version)", wholeFile: true)
            }
            func field(_ j: JSON?, _ what: String) throws(FormatError) -> Field {
                guard let a = j?.arrayValue, a.count == 2, let o = a[0].intValue, let s = a[1].intValue,
                      (0...65_535).contains(o), [1, 2, 4, 8].contains(s) else {
                    throw FormatError("\(what) is not [offset 0...65535, size 1, 2, 4 or 8]")
                }
                return Field(offset: Int(o), size: Int(s))
            }
            type = try field(header[Key.header.rawValue]?[Key.type.rawValue], "header.type")
            pid = try field(header[Key.header.rawValue]?[Key.pid.rawValue], "header.pid")
            guard case .object(let eventMembers)? = header[Key.events.rawValue] else { throw FormatError("no events") }
            var events: [String: (id: Int, fields: [String: Field])] = [:]
            var named: [Int: String] = [:]
            for (eventName, e) in eventMembers {
                guard let id = e[Key.id.rawValue]?.intValue, (0...65_535).contains(id), case .object(let fs)? = e[Key.fields.rawValue] else {
                    throw FormatError("event \(eventName) needs an id (0...65535) and fields")
                }
                // One id, one event: with two, a record's event would depend on which the decoder met last.
                if let other = named[Int(id)] { throw FormatError("events \(other) and \(eventName) both have id \(id)") }
                named[Int(id)] = eventName
                var fields: [String: Field] = [:]
                for (f, j) in fs { fields[f] = try field(j, "\(eventName).\(f)") }
                events[eventName] = (Int(id), fields)
            }
            self.events = events
            kernel = header[Key.kernel.rawValue]?.stringValue ?? "unknown"
        }
    }

    /// One record's line: CPU, time (trace clock, ns) and the record's bytes in base64.
    public static func recordLine(cpu: Int32, timeNs: UInt64, data: [UInt8]) -> String {
        JSON.object([(Key.cpu.rawValue, .int(Int64(cpu))), (timeKey, .u(timeNs)),
                     (Key.data.rawValue, .string(Data(data).base64EncodedString()))]).serialized + "\n"
    }

    /// A record line's CPU, time and bytes; nil when it is not one (the caller says why).
    public static func record(_ j: JSON) -> (cpu: Int32, timeNs: UInt64, data: [UInt8])? {
        guard let cpu = j[Key.cpu.rawValue]?.intValue, let c = Int32(exactly: cpu), c >= 0,
              let t = j[timeKey]?.uint64Value,
              let b64 = j[Key.data.rawValue]?.stringValue, let bytes = Data(base64Encoded: b64), bytes.count <= 65_536 else { return nil }
        return (c, t, Array(bytes))
    }

    /// What is wrong with a line; `wholeFile` when it is the file's (a version this vmscope does not read), not the line's.
    public struct FormatError: Error, Sendable {
        public var reason: String
        public var wholeFile: Bool
        public init(_ reason: String, wholeFile: Bool = false) { self.reason = reason; self.wholeFile = wholeFile }
    }
}
