import Foundation
import Synchronization

/// One memory fault, as `docs/control-protocol.md` ("Fault record") defines it.
public struct FaultRecord: Sendable, Equatable {
    public enum Source: String, Sendable { case kernel, vmm }
    public enum Access: String, Sendable { case read, write, exec, unknown }
    public enum Action: String, Sendable {
        case converted, paused, reported, injected
        /// A revoked page given its mapping back (attribute unchanged); see docs/control-protocol.md.
        case remapped
    }

    /// Per VM, from 1, no gaps.
    public var seq: UInt64 = 0
    /// CLOCK_MONOTONIC, nanoseconds.
    public var timeNs: UInt64
    public var vcpu: Int?
    public var gpa: UInt64
    public var size: UInt64
    /// Raw `memory_fault.flags` (kernel), or the same bit positions the kernel would set (vmm).
    public var flags: UInt64
    /// The access wanted private memory (flags bit 3).
    public var isPrivate: Bool
    public var access: Access
    /// errno name for kernel exits (`EFAULT`, `EHWPOISON`), else nil.
    public var errno: String?
    public var source: Source
    /// The KVM exit the record came from (`MEMORY_FAULT`, `MMIO`), or `none` for an injection record.
    public var exit: String
    /// The GFN's attribute when it faulted: `private` or `shared`.
    public var attribute: String
    /// The memslot involved, if any.
    public var slot: Int?
    public var action: Action

    public static let flagPrivate: UInt64 = 1 << 3
}

/// CLOCK_MONOTONIC in nanoseconds.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// The per-VM fault ring: bounded, numbered without gaps, overflow counted.
///
/// Writers (vCPU threads) hold the lock only to copy one record in; readers copy out. Nobody waits on a reader.
public final class FaultRing: Sendable {
    struct State {
        var buffer: [FaultRecord] = []
        var head = 0          // index of the oldest record once the buffer is full
        var total: UInt64 = 0
    }
    public let capacity: Int
    private let state = Mutex(State())

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Numbers `record` and appends it, evicting the oldest when full. Returns the record as stored.
    @discardableResult
    public func append(_ record: FaultRecord) -> FaultRecord {
        state.withLock { s in
            var r = record
            s.total += 1
            r.seq = s.total
            if s.buffer.count < capacity {
                s.buffer.append(r)
            } else {
                s.buffer[s.head] = r
                s.head = (s.head + 1) % capacity
            }
            return r
        }
    }

    /// Records appended so far.
    public var total: UInt64 { state.withLock { $0.total } }
    /// Records evicted before anyone could read them from the ring.
    public var dropped: UInt64 { state.withLock { $0.total - UInt64($0.buffer.count) } }

    /// The records with `seq > after`, oldest first, and how many such records were already evicted.
    public func records(after: UInt64, limit: Int = .max) -> (records: [FaultRecord], dropped: UInt64) {
        state.withLock { s in
            let ordered = Array(s.buffer[s.head...] + s.buffer[..<s.head])
            let oldest = ordered.first?.seq ?? (s.total + 1)
            let missed = oldest > after + 1 ? oldest - after - 1 : 0
            let newer = ordered.filter { $0.seq > after }
            return (Array(newer.prefix(limit)), missed)
        }
    }

    /// The most recent `limit` records, newest last.
    public func recent(_ limit: Int) -> [FaultRecord] {
        state.withLock { s in
            let ordered = Array(s.buffer[s.head...] + s.buffer[..<s.head])
            return Array(ordered.suffix(max(0, limit)))
        }
    }
}
