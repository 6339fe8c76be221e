import Foundation
import Schema

extension EventLayouts {
    /// A saved record, decoded as it was live.
    public func decode(_ r: RawTraceRecord) -> TraceEvent? { r.data.withUnsafeBytes { decode($0, cpu: r.cpu, timeNs: r.timeNs) } }
}

/// One record as the kernel wrote it into a per-CPU buffer: its bytes (common header, then the event's fields),
/// the CPU and the trace-clock time.
public struct RawTraceRecord: Sendable, Equatable {
    public var cpu: Int32
    public var timeNs: UInt64
    public var data: [UInt8]
    public init(cpu: Int32, timeNs: UInt64, data: [UInt8]) { self.cpu = cpu; self.timeNs = timeNs; self.data = data }
}

/// Raw tracepoint records saved with the layouts they were written in (`vmscope trace PID --save-raw FILE`), so
/// they decode later, elsewhere, exactly as they did live (`vmscope trace --load-raw FILE`): for a ticket, and for
/// the decode tests and benchmark, which read one recorded on this project's machines.
///
/// The file is JSON lines: a header (format, version, kernel release, the common header's and each event's field
/// offsets and sizes), then one line a record (`cpu`, `time-ns`, `data` in base64).
public struct RawTraceRecording: Sendable, Equatable {
    public static let format = "vmscope-raw-trace"
    public static let version = 1
    /// The most record bytes `init(contentsOf:)` keeps in memory (a million records are about 80 MiB).
    public static let maxBytes = 256 << 20

    public var kernel: String
    public var layouts: EventLayouts
    public var records: [RawTraceRecord]

    public init(kernel: String, layouts: EventLayouts, records: [RawTraceRecord]) {
        self.kernel = kernel; self.layouts = layouts; self.records = records
    }

    /// This machine's kernel release (`uname -r`).
    public static var runningKernel: String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    enum Key: String { case format, version, kernel, header, events, id, fields, type, pid, cpu, data }
    /// A record's time has the member name fault records give theirs.
    static let timeKey = FaultRecord.Member.timeNs.name

    private static func field(_ f: EventLayouts.Field) -> JSON { .array([.int(Int64(f.offset)), .int(Int64(f.size))]) }

    /// The file's first line: format, version, kernel and the layouts.
    public static func headerLine(kernel: String, layouts: EventLayouts) -> String {
        let events: [(String, JSON)] = layouts.events.sorted { $0.key < $1.key }.map { name, e in
            (name, .object([(Key.id.rawValue, .int(Int64(e.id))),
                            (Key.fields.rawValue, .object(e.fields.sorted { $0.key < $1.key }.map { ($0.key, Self.field($0.value)) }))]))
        }
        return JSON.object([
            (Key.format.rawValue, .string(Self.format)), (Key.version.rawValue, .int(Int64(Self.version))),
            (Key.kernel.rawValue, .string(kernel)),
            (Key.header.rawValue, .object([(Key.type.rawValue, Self.field(layouts.type)), (Key.pid.rawValue, Self.field(layouts.pid))])),
            (Key.events.rawValue, .object(events)),
        ]).serialized + "\n"
    }

    /// One record's line.
    public static func line(_ r: RawTraceRecord) -> String {
        JSON.object([(Key.cpu.rawValue, .int(Int64(r.cpu))), (Self.timeKey, .u(r.timeNs)),
                     (Key.data.rawValue, .string(Data(r.data).base64EncodedString()))]).serialized + "\n"
    }

    /// The whole file's text.
    public var text: String { Self.headerLine(kernel: kernel, layouts: layouts) + records.map(Self.line).joined() }

    /// Reads a whole file written by `--save-raw` (or `text`) into memory (at most `maxBytes`; `stream`
    /// reads any size); anything else is refused with the line and the reason.
    public init(contentsOf path: String) throws(TraceError) {
        var records: [RawTraceRecord] = []
        var size = 0
        let reader = try Self.stream(path: path) { batch, _ throws(TraceError) in
            size += batch.reduce(0) { $0 + $1.data.count + 48 }
            guard size <= Self.maxBytes else { throw TraceError("\(path): more than \(Self.maxBytes >> 20) MiB of records (vmscope trace --load-raw streams it)") }
            records += batch
        }
        self.init(kernel: reader.kernel, layouts: reader.layouts ?? EventLayouts(events: [:]), records: records)
    }

    public init(text: String, name: String = "recording") throws(TraceError) {
        var reader = RawTraceReader(name: name)
        var records: [RawTraceRecord] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if let r = try reader.take(line) { records.append(r) }
        }
        try reader.finish()
        self.init(kernel: reader.kernel, layouts: reader.layouts ?? EventLayouts(events: [:]), records: records)
    }

    /// Reads `path` a chunk at a time, handing each chunk's records to `each` with the reader (its layouts and
    /// kernel): memory stays within a chunk (1 MiB) and a line (at most `RawTraceReader.maxLine`), whatever the
    /// file's size.
    @discardableResult
    public static func stream(path: String, _ each: ([RawTraceRecord], RawTraceReader) throws(TraceError) -> Void) throws(TraceError) -> RawTraceReader {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw TraceError("\(path): cannot open", errno: errno)
        }
        defer { try? handle.close() }
        var reader = RawTraceReader(name: path)
        var pending: [UInt8] = []
        while true {
            let chunk: Data
            do { chunk = try handle.read(upToCount: 1 << 20) ?? Data() } catch { throw TraceError("\(path): \(error.localizedDescription)") }
            var batch: [RawTraceRecord] = []
            var start = pending.count
            pending += chunk
            var lineStart = 0
            while let nl = pending[start...].firstIndex(of: 10) {
                if let r = try reader.take(Substring(decoding: pending[lineStart..<nl], as: UTF8.self)) { batch.append(r) }
                lineStart = nl + 1
                start = lineStart
            }
            pending.removeFirst(lineStart)
            if chunk.isEmpty, !pending.isEmpty {
                // A last line with no newline: a record the writer was cut short in (a full disk, a kill) is
                // reported as such, not as damage; anything else is judged as any line is.
                do {
                    if let r = try reader.take(Substring(decoding: pending, as: UTF8.self)) { batch.append(r) }
                } catch where reader.layouts != nil {
                    reader.cutShort = true
                }
                pending = []
            }
            guard pending.count <= RawTraceReader.maxLine else {
                throw TraceError("\(path): line \(reader.line + 1): longer than \(RawTraceReader.maxLine >> 10) KiB")
            }
            if !batch.isEmpty { try each(batch, reader) }
            if chunk.isEmpty { break }
        }
        try reader.finish()
        return reader
    }
    /// Every record decoded with the layouts it was written in (records too short for their header skipped).
    public func decoded() -> [TraceEvent] { records.compactMap(layouts.decode) }
}

/// Reads a raw recording a line at a time: the header's layouts first, then one record a line. Each refusal names
/// the file, the line and the reason.
public struct RawTraceReader: Sendable {
    /// The longest line taken (a record line is about 100 bytes; a header with every KVM event, a few KiB).
    public static let maxLine = 1 << 20

    public let name: String
    public private(set) var kernel = "unknown"
    /// Known once the header line is read.
    public private(set) var layouts: EventLayouts?
    /// Lines taken so far.
    public private(set) var line = 0
    /// Whether the file ended inside a record line (its writer was stopped mid-write); that line is not decoded.
    public internal(set) var cutShort = false

    public init(name: String) { self.name = name }

    private typealias Key = RawTraceRecording.Key

    /// The record `text` holds; nil for the header and blank lines.
    public mutating func take(_ text: Substring) throws(TraceError) -> RawTraceRecord? {
        line += 1
        guard text.utf8.count <= Self.maxLine else { throw TraceError("\(name): line \(line): longer than \(Self.maxLine >> 10) KiB") }
        if text.allSatisfy(\.isWhitespace) { return nil }
        let j: JSON
        do { j = try JSON.parse(String(text)) } catch { throw TraceError("\(name): line \(line): not JSON (\(error))") }
        guard layouts != nil else {
            try header(j)
            return nil
        }
        guard let cpu = j[Key.cpu.rawValue]?.intValue, let c = Int32(exactly: cpu), c >= 0,
              let t = j[RawTraceRecording.timeKey]?.uint64Value,
              let b64 = j[Key.data.rawValue]?.stringValue, let bytes = Data(base64Encoded: b64), bytes.count <= 65_536 else {
            throw TraceError("\(name): line \(line): a record needs cpu (0...), time-ns and data (base64, at most 64 KiB)")
        }
        return RawTraceRecord(cpu: c, timeNs: t, data: Array(bytes))
    }

    /// After the last line: a file with no header is refused.
    public func finish() throws(TraceError) {
        guard layouts != nil else { throw TraceError("\(name): empty") }
    }

    private mutating func header(_ header: JSON) throws(TraceError) {
        guard header[Key.format.rawValue]?.stringValue == RawTraceRecording.format else {
            throw TraceError("\(name): line \(line): not a \(RawTraceRecording.format) file")
        }
        guard let v = header[Key.version.rawValue]?.intValue, v == RawTraceRecording.version else {
            throw TraceError("\(name): format version \(header[Key.version.rawValue]?.serialized ?? "missing"); this vmscope reads version \(RawTraceRecording.version)")
        }
        let n = line
        func field(_ j: JSON?, _ what: String) throws(TraceError) -> EventLayouts.Field {
            guard let a = j?.arrayValue, a.count == 2, let o = a[0].intValue, let s = a[1].intValue,
                  (0...65_535).contains(o), [1, 2, 4, 8].contains(s) else {
                throw TraceError("\(name): line \(n): \(what) is not [offset 0...65535, size 1, 2, 4 or 8]")
            }
            return .init(offset: Int(o), size: Int(s))
        }
        let type = try field(header[Key.header.rawValue]?[Key.type.rawValue], "header.type")
        let pid = try field(header[Key.header.rawValue]?[Key.pid.rawValue], "header.pid")
        guard case .object(let eventMembers)? = header[Key.events.rawValue] else { throw TraceError("\(name): line \(n): no events") }
        var events: [String: EventLayouts.Event] = [:]
        var named: [Int: String] = [:]
        for (eventName, e) in eventMembers {
            guard let id = e[Key.id.rawValue]?.intValue, (0...65_535).contains(id), case .object(let fs)? = e[Key.fields.rawValue] else {
                throw TraceError("\(name): line \(n): event \(eventName) needs an id (0...65535) and fields")
            }
            // One id, one event: with two, a record's event would depend on which the decoder met last.
            if let other = named[Int(id)] {
                throw TraceError("\(name): line \(n): events \(other) and \(eventName) both have id \(id)")
            }
            named[Int(id)] = eventName
            var fields: [String: EventLayouts.Field] = [:]
            for (f, j) in fs { fields[f] = try field(j, "\(eventName).\(f)") }
            events[eventName] = .init(id: Int(id), fields: fields)
        }
        kernel = header[Key.kernel.rawValue]?.stringValue ?? "unknown"
        layouts = EventLayouts(events: events, type: type, pid: pid)
    }
}
