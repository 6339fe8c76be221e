import CZlib
import Schema
import Foundation

/// A gzip file written as a stream: `write` compresses, `flush` makes everything written so far readable
/// (Z_SYNC_FLUSH, then write(2)), `finish` ends the stream with its trailer. A writer killed between flushes leaves
/// a file whose readable part ends at the last flush.
public final class GzipWriter {
    private var stream = z_stream()
    private let fd: Int32
    public let path: String
    private var out = [UInt8](repeating: 0, count: 1 << 16)
    private var finished = false
    /// Compressed bytes written to the file so far.
    public private(set) var bytesWritten: UInt64 = 0

    public init(path: String) throws(RecordingError) {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io("cannot create \(path): \(String(cString: strerror(errno)))") }
        // windowBits 15 + 16: a gzip wrapper, so `zcat` reads the file too.
        let rc = deflateInit2_(&stream, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                               Int32(MemoryLayout<z_stream>.size))
        guard rc == Z_OK else {
            close(fd)
            throw .io("zlib deflateInit2 failed (\(rc))")
        }
    }

    deinit {
        deflateEnd(&stream)
        close(fd)
    }

    public func write(_ bytes: [UInt8]) throws(RecordingError) {
        try run(bytes, Z_NO_FLUSH)
    }

    public func flush() throws(RecordingError) {
        try run([], Z_SYNC_FLUSH)
    }

    /// Ends the stream (the gzip trailer) and syncs the file; nothing can be written after.
    public func finish() throws(RecordingError) {
        guard !finished else { return }
        try run([], Z_FINISH)
        finished = true
        guard fsync(fd) == 0 || errno == EINVAL else { throw .io("fsync \(path): \(String(cString: strerror(errno)))") }
    }

    private func run(_ input: [UInt8], _ mode: Int32) throws(RecordingError) {
        guard !finished else { throw .io("\(path) is already finished") }
        var result: RecordingError?
        input.withUnsafeBufferPointer { inp in
            stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
            stream.avail_in = UInt32(inp.count)
            repeat {
                let produced: Int = out.withUnsafeMutableBufferPointer { o in
                    stream.next_out = o.baseAddress
                    stream.avail_out = UInt32(o.count)
                    let rc = deflate(&stream, mode)
                    if rc == Z_STREAM_ERROR { result = .io("zlib deflate failed") }
                    return o.count - Int(stream.avail_out)
                }
                if result != nil { return }
                var done = 0
                while done < produced {
                    let n = out.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + done, produced - done) }
                    if n < 0 {
                        if errno == EINTR { continue }
                        result = .io("cannot write \(path): \(String(cString: strerror(errno)))")
                        return
                    }
                    done += n
                }
                bytesWritten += UInt64(produced)
            } while stream.avail_out == 0 || stream.avail_in > 0
            stream.next_in = nil
        }
        if let result { throw result }
    }
}

/// Reading a gzip file as far as it goes: everything up to the end of the stream, or up to the point where the
/// file ends early or its data is damaged (said in `damage`).
public enum GzipReader {
    /// The most a recording inflates to by default (docs/reliability.md): a gzip bomb (1 MB → 1 GiB) is read
    /// up to here and said to be cut, instead of taking all the memory there is.
    public static let defaultLimit = 256 << 20

    public static func inflateAll(_ data: [UInt8], limit: Int = defaultLimit) -> (bytes: [UInt8], damage: String?) {
        guard data.count >= 2, data[0] == 0x1F, data[1] == 0x8B else {
            return ([], data.isEmpty ? "the file is empty" : "not a gzip file (it does not start with 1f 8b)")
        }
        var stream = z_stream()
        guard inflateInit2_(&stream, 15 + 16, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            return ([], "zlib inflateInit2 failed")
        }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var damage: String?
        data.withUnsafeBufferPointer { inp in
            stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
            stream.avail_in = UInt32(inp.count)
            while true {
                var rc: Int32 = 0
                let produced: Int = chunk.withUnsafeMutableBufferPointer { o in
                    stream.next_out = o.baseAddress
                    stream.avail_out = UInt32(o.count)
                    rc = inflate(&stream, Z_NO_FLUSH)
                    return o.count - Int(stream.avail_out)
                }
                let at = inp.count - Int(stream.avail_in)
                guard output.count + produced <= limit else {
                    output.append(contentsOf: chunk[0..<(limit - output.count)])
                    damage = "it inflates past \(limit >> 20) MiB (after \(at) of \(inp.count) compressed bytes), the most read; the rest is left out"
                    return
                }
                output.append(contentsOf: chunk[0..<produced])
                switch rc {
                case Z_STREAM_END:
                    if stream.avail_in > 0 { damage = "\(stream.avail_in) bytes after the end of the gzip stream were ignored" }
                    return
                case Z_OK:
                    continue
                case Z_BUF_ERROR where stream.avail_in == 0:
                    damage = "the file ends inside the compressed stream (after \(at) of \(inp.count) bytes): it was not finished"
                    return
                default:
                    let why = stream.msg.map { String(cString: $0) } ?? "error \(rc)"
                    damage = "the compressed data is damaged near byte \(at) of \(inp.count): \(why)"
                    return
                }
            }
        }
        return (output, damage)
    }
}
