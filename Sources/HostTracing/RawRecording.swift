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
    public static let format = RawTraceFormat.format
    public static let version = RawTraceFormat.version
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

    /// The file's first line: format, version, kernel and the layouts.
    public static func headerLine(kernel: String, layouts: EventLayouts) -> String {
        func field(_ f: EventLayouts.Field) -> RawTraceFormat.Field { .init(offset: f.offset, size: f.size) }
        return RawTraceFormat.Header(kernel: kernel, type: field(layouts.type), pid: field(layouts.pid),
                                     events: layouts.events.mapValues { e in (e.id, e.fields.mapValues(field)) }).line
    }

    /// One record's line.
    public static func line(_ r: RawTraceRecord) -> String { RawTraceFormat.recordLine(cpu: r.cpu, timeNs: r.timeNs, data: r.data) }

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
        guard let r = RawTraceFormat.record(j) else {
            throw TraceError("\(name): line \(line): a record needs cpu (0...), time-ns and data (base64, at most 64 KiB)")
        }
        return RawTraceRecord(cpu: r.cpu, timeNs: r.timeNs, data: r.data)
    }

    /// After the last line: a file with no header is refused.
    public func finish() throws(TraceError) {
        guard layouts != nil else { throw TraceError("\(name): empty") }
    }

    private mutating func header(_ j: JSON) throws(TraceError) {
        let h: RawTraceFormat.Header
        do { h = try RawTraceFormat.Header(json: j) } catch {
            throw TraceError(error.wholeFile ? "\(name): \(error.reason)" : "\(name): line \(line): \(error.reason)")
        }
        func field(_ f: RawTraceFormat.Field) -> EventLayouts.Field { .init(offset: f.offset, size: f.size) }
        kernel = h.kernel
        layouts = EventLayouts(events: h.events.mapValues { e in .init(id: e.id, fields: e.fields.mapValues(field)) },
                               type: field(h.type), pid: field(h.pid))
    }
}
