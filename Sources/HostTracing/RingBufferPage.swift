/// One page of the kernel's trace ring buffer as `per_cpu/cpuN/trace_pipe_raw` gives it, walked record by record.
///
/// vmscope read these with libtraceevent's kbuffer: three calls through function pointers a record, about 240
/// instructions an event of the 940 `trace --paired-only` spent (callgrind, 20,000 exits/s). This walks the same layout in place, as
/// kbuffer 1.8 does (the kernel's include/linux/ring_buffer.h and kernel/trace/ring_buffer.c), with every length
/// checked against the page: a record that would reach past the page's committed bytes ends the walk there.
/// `RingBufferPageTests` holds it against kbuffer on random pages of every record kind.
///
/// The page (64-bit kernel, little-endian):
/// - `u64` the page's first timestamp; `u64` commit: the bytes of records, with bit 31 set where events were lost
///   before this page and bit 30 where their number follows the records (a `u64` at 16 + size);
/// - records, each a `u32` header: `type_len` in bits 0–4, the time since the previous record in bits 5–31:
///   - 1–28: a record of `type_len` × 4 bytes after the header;
///   - 0: the record's length + 4 in the next `u32`, rounded up to 4, the record after it;
///   - 29: padding or a discarded record, its length in the next `u32` (counted from there);
///   - 30: the time runs on by the next `u32` << 27 + the header's delta;
///   - 31: an absolute timestamp, the next `u32` << 27 + the delta, its top 5 bits those of the time before.
public enum RingBufferPage {
    static let headerBytes = 16
    static let commitMask: UInt64 = (1 << 27) - 1
    static let missedEvents: UInt64 = 1 << 31
    static let missedStored: UInt64 = 1 << 30
    static let timeShift: UInt64 = 27
    static let absoluteTimeKeptBits: UInt64 = 0xf8 << 56

    /// Events the kernel lost before `page`: 0, their number, or -1 where it lost some without room to say how many.
    public static func missed(_ page: UnsafeRawBufferPointer) -> Int {
        guard page.count >= headerBytes else { return 0 }
        let commit = page.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        guard commit & missedEvents != 0 else { return 0 }
        let size = Int(commit & commitMask)
        guard commit & missedStored != 0, headerBytes + size + 8 <= page.count else { return -1 }
        return Int(truncatingIfNeeded: page.loadUnaligned(fromByteOffset: headerBytes + size, as: UInt64.self))
    }

    /// Gives `body` each record of `page` (its bytes and timestamp); returns whether `body` returned true for any (a
    /// read page is gone from the kernel's buffer, so its records are all given, whatever `body` says).
    @inline(__always)
    public static func forEachRecord(_ page: UnsafeRawBufferPointer,
                                     _ body: (UnsafeRawBufferPointer, UInt64) -> Bool) -> Bool {
        guard page.count >= headerBytes, let base = page.baseAddress else { return false }
        var ts = page.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        let commit = page.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        let data = base + headerBytes
        let size = min(Int(commit & commitMask), page.count - headerBytes)
        var next = 0
        var enough = false
        while next + 4 <= size {
            let header = data.loadUnaligned(fromByteOffset: next, as: UInt32.self)
            let typeLen = header & 31
            let delta = UInt64(header >> 5)
            var at = next + 4
            switch typeLen {
            case 0...28:
                var length = Int(typeLen) * 4
                if typeLen == 0 {
                    guard at + 4 <= size else { return enough }
                    let stated = Int(data.loadUnaligned(fromByteOffset: at, as: UInt32.self))
                    guard stated >= 4 else { return enough }
                    length = (stated - 4 + 3) & ~3
                    at += 4
                }
                ts &+= delta
                guard at + length <= size else { return enough }
                next = at + length
                if body(UnsafeRawBufferPointer(start: data + at, count: length), ts) { enough = true }
            case 29:
                guard at + 4 <= size else { return enough }
                ts &+= delta
                next = at + Int(data.loadUnaligned(fromByteOffset: at, as: UInt32.self))
            default:  // 30, 31
                guard at + 4 <= size else { return enough }
                let extend = (UInt64(data.loadUnaligned(fromByteOffset: at, as: UInt32.self)) << timeShift) &+ delta
                if typeLen == 30 { ts &+= extend } else { ts = extend | (ts & absoluteTimeKeptBits) }
                next = at + 4
            }
        }
        return enough
    }
}
