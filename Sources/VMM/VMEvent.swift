import Schema

/// The VMM's events, as the control protocol's events carry them (fault records travel in `FaultRing`).
public enum VMEvent: Sendable, Equatable {
    case memoryAttributesChanged(gpa: UInt64, size: UInt64, isPrivate: Bool, cause: ConversionCause, vcpu: Int?)
    case memslotsChanged(generation: UInt64)
    case vcpuStateChanged(index: Int, state: VCPURunState, reason: String)
    case faultInjected(InjectionReport)
    case guestReport(vcpu: Int, kind: GuestReportKind, value: UInt64)
}

/// A bounded log of events with sequence numbers; each reader keeps its own position.
///
/// Appending never waits for readers: when the log is full the oldest event goes, and a reader that had
/// not seen it learns how many it missed.
public final class EventLog: Sendable {
    public struct Entry: Sendable, Equatable {
        public var seq: UInt64
        public var timeNs: UInt64
        public var event: VMEvent
    }
    private let ring: SequencedRing<Entry>

    public init(capacity: Int) { ring = SequencedRing(capacity: capacity) }

    public var capacity: Int { ring.capacity }

    public func append(_ event: VMEvent) {
        let now = HostClock.monotonicNs()
        ring.append { Entry(seq: $0, timeNs: now, event: event) }
    }

    public var lastSeq: UInt64 { ring.total }

    /// Events with `seq > after`, oldest first, and the number evicted before this reader saw them.
    public func events(after: UInt64) -> (entries: [Entry], dropped: UInt64) {
        ring.entries(after: after)
    }
}
