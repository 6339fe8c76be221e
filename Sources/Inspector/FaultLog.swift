import Schema

/// The newest fault records, oldest first: a list a copy of which costs a few hundred references, not its records.
///
/// The inspector's model crosses threads by copy (the source's worker publishes it, the UI draws it) and is changed
/// again at the next batch. In one flat buffer that change copied all 100,000 records, 50 times a second under a
/// full stream (a third of a core). Here the records sit in chunks of `chunkSize`: a copy shares them, and a change
/// copies only the chunk it touches (the last, for an append) and the list of chunks.
public struct FaultLog: RandomAccessCollection, MutableCollection, Sendable {
    static let chunkSize = 1024
    /// Every chunk but the last holds `chunkSize` records; the first begins at `head`.
    private var chunks: [[FaultRecord]] = []
    private var head = 0
    public private(set) var count = 0

    public init() {}

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    @inline(__always) private func locate(_ i: Int) -> (chunk: Int, offset: Int) {
        let p = head + i
        return (p / Self.chunkSize, p % Self.chunkSize)
    }

    public subscript(i: Int) -> FaultRecord {
        get {
            precondition(i >= 0 && i < count, "fault index \(i) out of 0..<\(count)")
            let (c, o) = locate(i)
            return chunks[c][o]
        }
        set {
            precondition(i >= 0 && i < count, "fault index \(i) out of 0..<\(count)")
            let (c, o) = locate(i)
            chunks[c][o] = newValue
        }
    }

    public mutating func append(_ r: FaultRecord) {
        if chunks.isEmpty || chunks[chunks.count - 1].count == Self.chunkSize {
            var fresh: [FaultRecord] = []
            fresh.reserveCapacity(Self.chunkSize)
            chunks.append(fresh)
        }
        chunks[chunks.count - 1].append(r)
        count += 1
    }

    public mutating func append(contentsOf records: some Collection<FaultRecord>) {
        var rest = records[...]
        while !rest.isEmpty {
            if chunks.isEmpty || chunks[chunks.count - 1].count == Self.chunkSize {
                var fresh: [FaultRecord] = []
                fresh.reserveCapacity(Self.chunkSize)
                chunks.append(fresh)
            }
            let room = Self.chunkSize - chunks[chunks.count - 1].count
            let part = rest.prefix(room)
            chunks[chunks.count - 1].append(contentsOf: part)
            count += part.count
            rest = rest.dropFirst(part.count)
        }
    }

    /// Drops the `k` oldest records (whole chunks once they are passed).
    public mutating func removeFirst(_ k: Int = 1) {
        precondition(k >= 0 && k <= count, "removing \(k) of \(count) faults")
        count -= k
        head += k
        if count == 0 {
            chunks.removeAll(keepingCapacity: true)
            head = 0
            return
        }
        let gone = head / Self.chunkSize
        if gone > 0 {
            chunks.removeFirst(gone)
            head -= gone * Self.chunkSize
        }
    }
}
