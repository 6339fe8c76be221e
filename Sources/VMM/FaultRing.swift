import Foundation
import KVM
import Schema
import Synchronization


/// A bounded log whose entries are numbered from 1 without gaps; when full, the oldest entry goes.
///
/// Writers hold the lock only to copy one entry in; readers copy out. Nobody waits on a reader, and a reader
/// that fell behind learns how many entries it missed.
final class SequencedRing<Element: Sendable>: Sendable {
    struct State {
        var buffer: [Element] = []
        var head = 0          // index of the oldest entry once the buffer is full
        var total: UInt64 = 0
    }
    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Appends the entry `make` builds from its sequence number; returns it.
    @discardableResult
    func append(_ make: (UInt64) -> Element) -> Element {
        state.withLock { s in
            s.total += 1
            let e = make(s.total)
            if s.buffer.count < capacity {
                s.buffer.append(e)
            } else {
                s.buffer[s.head] = e
                s.head = (s.head + 1) % capacity
            }
            return e
        }
    }

    var total: UInt64 { state.withLock { $0.total } }
    /// Entries evicted so far.
    var evicted: UInt64 { state.withLock { $0.total - UInt64($0.buffer.count) } }

    /// Entries numbered after `after`, oldest first (at most `limit`), and how many of those were already evicted.
    func entries(after: UInt64, limit: Int = .max) -> (entries: [Element], dropped: UInt64) {
        state.withLock { s in
            let retained = UInt64(s.buffer.count)
            let oldest = s.total - retained + 1
            // `after` is a peer's number: up to UInt64.max (oldest >= 1, so oldest - 1 cannot wrap).
            let missed = after < oldest - 1 ? oldest - 1 - after : 0
            let skip = after >= oldest ? Int(min(after - oldest + 1, retained)) : 0
            // Only the entries asked for are copied, straight out of the ring (readers poll this often).
            let count = min(limit, s.buffer.count - skip)
            guard count > 0 else { return ([], missed) }
            let start = s.buffer.count < capacity ? 0 : s.head
            let out = (0..<count).map { s.buffer[(start + skip + $0) % s.buffer.count] }
            return (out, missed)
        }
    }

    /// The most recent `limit` entries, newest last.
    func recent(_ limit: Int) -> [Element] {
        state.withLock { s in
            let count = min(max(0, limit), s.buffer.count)
            let start = s.buffer.count < capacity ? 0 : s.head
            return (0..<count).map { s.buffer[(start + s.buffer.count - count + $0) % s.buffer.count] }
        }
    }
}

/// The per-VM fault ring: bounded, numbered without gaps (`seq`), overflow counted.
public final class FaultRing: Sendable {
    private let ring: SequencedRing<FaultRecord>
    /// Counts each appended record's exit, for exporters (the ring forgets; the counts do not).
    let counters: VMMCounters?

    public init(capacity: Int, counters: VMMCounters? = nil) { ring = SequencedRing(capacity: capacity); self.counters = counters }

    public var capacity: Int { ring.capacity }

    /// Numbers `record` and appends it, evicting the oldest when full. Returns the record as stored.
    @discardableResult
    public func append(_ record: FaultRecord) -> FaultRecord {
        counters?.recordFault(record)
        return ring.append { seq in
            var r = record
            r.seq = seq
            return r
        }
    }

    /// Records appended so far.
    public var total: UInt64 { ring.total }
    /// Records evicted before anyone could read them from the ring.
    public var dropped: UInt64 { ring.evicted }

    /// The records with `seq > after`, oldest first, and how many such records were already evicted.
    public func records(after: UInt64, limit: Int = .max) -> (records: [FaultRecord], dropped: UInt64) {
        let r = ring.entries(after: after, limit: limit)
        return (r.entries, r.dropped)
    }

    /// The most recent `limit` records, newest last.
    public func recent(_ limit: Int) -> [FaultRecord] { ring.recent(limit) }
}
