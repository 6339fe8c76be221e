import Foundation
import Schema

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
    /// The largest file read (a recording of a million records is about 100 MiB).
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

    private enum Key: String { case format, version, kernel, header, events, id, fields, type, pid, cpu, data }
    /// A record's time has the member name fault records give theirs.
    private static let timeKey = FaultRecord.Member.timeNs.name

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

    public func write(to path: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    /// Reads a file written by `write(to:)`; anything else is refused with the line and the reason.
    public init(contentsOf path: String) throws(TraceError) {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw TraceError("\(path): cannot open (\(String(cString: strerror(errno))))")
        }
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: Self.maxBytes + 1) ?? Data() } catch {
            throw TraceError("\(path): \(error.localizedDescription)")
        }
        guard data.count <= Self.maxBytes else { throw TraceError("\(path): larger than \(Self.maxBytes >> 20) MiB") }
        try self.init(text: String(decoding: data, as: UTF8.self), name: path)
    }

    public init(text: String, name: String = "recording") throws(TraceError) {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: true).makeIterator()
        guard let first = lines.next() else { throw TraceError("\(name): empty") }
        let header: JSON
        do { header = try JSON.parse(String(first)) } catch { throw TraceError("\(name): line 1: not JSON (\(error))") }
        guard header[Key.format.rawValue]?.stringValue == Self.format else {
            throw TraceError("\(name): line 1: not a \(Self.format) file")
        }
        guard let v = header[Key.version.rawValue]?.intValue, v == Self.version else {
            throw TraceError("\(name): format version \(header[Key.version.rawValue]?.serialized ?? "missing"); this vmscope reads version \(Self.version)")
        }
        func field(_ j: JSON?, _ what: String) throws(TraceError) -> EventLayouts.Field {
            guard let a = j?.arrayValue, a.count == 2, let o = a[0].intValue, let s = a[1].intValue,
                  (0...65_535).contains(o), [1, 2, 4, 8].contains(s) else {
                throw TraceError("\(name): line 1: \(what) is not [offset 0...65535, size 1, 2, 4 or 8]")
            }
            return .init(offset: Int(o), size: Int(s))
        }
        let type = try field(header[Key.header.rawValue]?[Key.type.rawValue], "header.type")
        let pid = try field(header[Key.header.rawValue]?[Key.pid.rawValue], "header.pid")
        guard case .object(let eventMembers)? = header[Key.events.rawValue] else { throw TraceError("\(name): line 1: no events") }
        var events: [String: EventLayouts.Event] = [:]
        for (eventName, e) in eventMembers {
            guard let id = e[Key.id.rawValue]?.intValue, (0...65_535).contains(id), case .object(let fs)? = e[Key.fields.rawValue] else {
                throw TraceError("\(name): line 1: event \(eventName) needs an id (0...65535) and fields")
            }
            var fields: [String: EventLayouts.Field] = [:]
            for (f, j) in fs { fields[f] = try field(j, "\(eventName).\(f)") }
            events[eventName] = .init(id: Int(id), fields: fields)
        }
        kernel = header[Key.kernel.rawValue]?.stringValue ?? "unknown"
        layouts = EventLayouts(events: events, type: type, pid: pid)
        records = []
        var n = 1
        while let line = lines.next() {
            n += 1
            let j: JSON
            do { j = try JSON.parse(String(line)) } catch { throw TraceError("\(name): line \(n): not JSON (\(error))") }
            guard let cpu = j[Key.cpu.rawValue]?.intValue, let c = Int32(exactly: cpu), c >= 0,
                  let t = j[Self.timeKey]?.uint64Value,
                  let b64 = j[Key.data.rawValue]?.stringValue, let bytes = Data(base64Encoded: b64), bytes.count <= 65_536 else {
                throw TraceError("\(name): line \(n): a record needs cpu (0...), time-ns and data (base64, at most 64 KiB)")
            }
            records.append(RawTraceRecord(cpu: c, timeNs: t, data: Array(bytes)))
        }
    }

    /// Every record decoded with the layouts it was written in (records too short for their header skipped).
    public func decoded() -> [TraceEvent] {
        records.compactMap { r in r.data.withUnsafeBytes { layouts.decode($0, cpu: r.cpu, timeNs: r.timeNs) } }
    }
}
