import CTraceFS
import Foundation
@testable import HostTracing
import Testing

/// vmscope's own walk of the ring buffer's pages (`RingBufferPage`), against a model of the layout written from the
/// kernel's description and, where libtraceevent is installed, against its kbuffer, which vmscope used before.
@Suite struct RingBufferPageTests {
    struct Record: Equatable { var bytes: [UInt8]; var ts: UInt64 }

    /// A page of random records of every kind, and what a reader must make of it.
    struct Page {
        var bytes = [UInt8](repeating: 0, count: 4096)
        var records: [Record] = []
        var missed = 0
    }

    static func put32(_ v: UInt32, _ b: inout [UInt8], _ at: Int) { for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }
    static func put64(_ v: UInt64, _ b: inout [UInt8], _ at: Int) { for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } }

    static func randomPage<G: RandomNumberGenerator>(_ g: inout G) -> Page {
        var p = Page()
        var ts = UInt64.random(in: 0...UInt64.max, using: &g)
        put64(ts, &p.bytes, 0)
        var at = 16
        let limit = 16 + Int.random(in: 0...(4096 - 16 - 8), using: &g)  // room for a stored count after
        while true {
            let kind = Int.random(in: 0..<10, using: &g)
            let delta = UInt32.random(in: 0..<(1 << 27), using: &g)
            func header(_ typeLen: UInt32) -> UInt32 { typeLen | delta << 5 }
            switch kind {
            case 0..<5:  // a small record
                let words = Int.random(in: 1...28, using: &g)
                guard at + 4 + words * 4 <= limit else { break }
                put32(header(UInt32(words)), &p.bytes, at)
                let payload = (0..<words * 4).map { _ in UInt8.random(in: 0...255, using: &g) }
                p.bytes.replaceSubrange(at + 4..<at + 4 + payload.count, with: payload)
                ts &+= UInt64(delta)
                p.records.append(Record(bytes: payload, ts: ts))
                at += 4 + payload.count
                continue
            case 5, 6:  // a long one: its length + 4 in the next word, the record rounded up to 4
                let length = Int.random(in: 1...300, using: &g)
                let rounded = (length + 3) & ~3
                guard at + 8 + rounded <= limit else { break }
                put32(header(0), &p.bytes, at)
                put32(UInt32(length + 4), &p.bytes, at + 4)
                let payload = (0..<rounded).map { _ in UInt8.random(in: 0...255, using: &g) }
                p.bytes.replaceSubrange(at + 8..<at + 8 + rounded, with: payload)
                ts &+= UInt64(delta)
                p.records.append(Record(bytes: payload, ts: ts))
                at += 8 + rounded
                continue
            case 7:  // the time runs on
                guard at + 8 <= limit else { break }
                let high = UInt32.random(in: 0...UInt32.max, using: &g)
                put32(header(30), &p.bytes, at); put32(high, &p.bytes, at + 4)
                ts &+= UInt64(high) << 27 &+ UInt64(delta)
                at += 8
                continue
            case 8:  // an absolute time: its top five bits are those of the time before
                guard at + 8 <= limit else { break }
                let high = UInt32.random(in: 0...UInt32.max, using: &g)
                put32(header(31), &p.bytes, at); put32(high, &p.bytes, at + 4)
                ts = (UInt64(high) << 27 &+ UInt64(delta)) | (ts & (0xf8 << 56))
                at += 8
                continue
            default:  // a discarded record: its length counted from the word that holds it
                let length = 4 * Int.random(in: 1...20, using: &g)
                guard at + 4 + length <= limit else { break }
                put32(header(29), &p.bytes, at); put32(UInt32(length), &p.bytes, at + 4)
                ts &+= UInt64(delta)
                at += 4 + length
                continue
            }
            break
        }
        var commit = UInt64(at - 16)
        switch Int.random(in: 0..<4, using: &g) {
        case 0:
            p.missed = Int.random(in: 1...1_000_000, using: &g)
            commit |= 1 << 31 | 1 << 30
            put64(UInt64(p.missed), &p.bytes, at)
        case 1:
            p.missed = -1
            commit |= 1 << 31
        default: break
        }
        put64(commit | UInt64.random(in: 0...1, using: &g) << 40, &p.bytes, 8)  // bits the reader must ignore
        return p
    }

    static func ours(_ bytes: [UInt8]) -> (records: [Record], missed: Int) {
        bytes.withUnsafeBytes { page in
            var out: [Record] = []
            _ = RingBufferPage.forEachRecord(page) { out.append(Record(bytes: Array($0), ts: $1)); return false }
            return (out, RingBufferPage.missed(page))
        }
    }

    @Test func randomPagesOfEveryRecordKindReadAsTheLayoutSays() {
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let p = Self.randomPage(&g)
            let (records, missed) = Self.ours(p.bytes)
            #expect(records == p.records)
            #expect(missed == p.missed)
            if records != p.records { return }
        }
    }

    @Test(.enabled(if: (try? TraceLibraries.api())?.kbuffer_alloc != nil, "libtraceevent with kbuffer is not installed (Debian's libtraceevent1; .ci/run installs it)"))
    func kbufferReadsTheSamePages() throws {
        let fs = try TraceLibraries.api()
        let alloc = try #require(fs.kbuffer_alloc), load = try #require(fs.kbuffer_load_subbuffer)
        let first = try #require(fs.kbuffer_read_event), next = try #require(fs.kbuffer_next_event)
        let size = try #require(fs.kbuffer_event_size), missed = try #require(fs.kbuffer_missed_events)
        let kbuf = try #require(alloc(CTRACEFS_KBUFFER_LSIZE_8, CTRACEFS_KBUFFER_ENDIAN_LITTLE))
        defer { fs.kbuffer_free?(kbuf) }
        var g = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var p = Self.randomPage(&g)
            var theirs: [Record] = [], theirMissed = 0
            p.bytes.withUnsafeMutableBytes { page in
                guard load(kbuf, page.baseAddress) >= 0 else { return }
                theirMissed = Int(missed(kbuf))
                var ts: UInt64 = 0
                var d = first(kbuf, &ts)
                while let data = d {
                    theirs.append(Record(bytes: Array(UnsafeRawBufferPointer(start: data, count: Int(size(kbuf)))), ts: ts))
                    d = next(kbuf, &ts)
                }
            }
            let (records, ourMissed) = Self.ours(p.bytes)
            #expect(records == theirs)
            // kbuffer says a page's losses only while its first record is data: after a leading time stamp, time
            // extension or padding it says 0 (`kbuffer_missed_events` looks at the record it stands on). Losses
            // the kernel put on such a page went uncounted before.
            let leading = p.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) & ((1 << 27) - 1) } >= 4
                ? p.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt32.self) & 31 } : 0
            #expect(ourMissed == (leading >= 29 ? p.missed : theirMissed))
            #expect(leading >= 29 ? theirMissed == 0 : true)
            if records != theirs { return }
        }
    }

    /// Whatever a page holds, every record given lies inside the page's bytes and the walk ends.
    @Test func aDamagedPageNeverReadsOutsideItself() {
        var g = SystemRandomNumberGenerator()
        for i in 0..<5000 {
            var bytes: [UInt8]
            if i % 2 == 0 {
                bytes = Self.randomPage(&g).bytes
                for _ in 0..<Int.random(in: 1...8, using: &g) { bytes[Int.random(in: 0..<bytes.count, using: &g)] = .random(in: 0...255, using: &g) }
            } else {
                bytes = (0..<Int.random(in: 0...4096, using: &g)).map { _ in .random(in: 0...255, using: &g) }
            }
            let count = bytes.count
            bytes.withUnsafeBytes { page in
                var outside = 0
                _ = RingBufferPage.forEachRecord(page) { r, _ in
                    if r.count > 0 && (r.baseAddress! < page.baseAddress! || r.baseAddress! + r.count > page.baseAddress! + count) { outside += 1 }
                    return false
                }
                _ = RingBufferPage.missed(page)
                #expect(outside == 0)
            }
        }
    }
}
