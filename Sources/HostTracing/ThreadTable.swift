/// What the pairings keep for each thread (its last page fault, last exit, pending conversion or request), keyed by
/// the thread's id: open addressing with linear probing and a multiplicative hash, seeded once a process.
///
/// Dictionary hashes every key with SipHash, about 75 instructions a lookup (callgrind), and the pairings look a
/// thread up two to four times an event: on a lab trace of 7,000-10,000 events a second that was a tenth of what
/// the tracer spent an event. The seed makes which tids collide differ from one process to the next, so a recording
/// made to collide cannot; each pairing also bounds how many threads it keeps.
public struct ThreadTable<Value> {
    /// A slot's key: the tid's 32 bits, or `empty`.
    private var keys: [UInt64] = []
    private var values: [Value?] = []
    public private(set) var count = 0
    /// 64 minus log2 of the capacity: a hash's top bits pick the slot.
    private var shift: UInt64 = 64

    private static var empty: UInt64 { .max }
    private static var seed: UInt64 { threadTableSeed }

    public init() {}

    public var isEmpty: Bool { count == 0 }

    @inline(__always) private func home(_ key: UInt64) -> Int {
        Int(truncatingIfNeeded: ((key ^ Self.seed) &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    @inline(__always) private static func key(_ tid: Int32) -> UInt64 { UInt64(UInt32(bitPattern: tid)) }

    /// The slot holding `tid`, if one does.
    @inline(__always) private func slot(of tid: Int32) -> Int? {
        guard count > 0 else { return nil }
        let k = Self.key(tid), mask = keys.count - 1
        var i = home(k)
        while true {
            let here = keys[i]
            if here == k { return i }
            if here == Self.empty { return nil }
            i = (i + 1) & mask
        }
    }

    public subscript(tid: Int32) -> Value? {
        get { slot(of: tid).flatMap { values[$0] } }
        set {
            if let newValue { insert(tid, newValue) } else { removeValue(forKey: tid) }
        }
    }

    private mutating func insert(_ tid: Int32, _ value: Value) {
        if let i = slot(of: tid) { values[i] = value; return }
        if (count + 1) * 4 > keys.count * 3 { grow() }
        let k = Self.key(tid), mask = keys.count - 1
        var i = home(k)
        while keys[i] != Self.empty { i = (i + 1) & mask }
        keys[i] = k
        values[i] = value
        count += 1
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values
        let capacity = max(16, keys.count * 2)
        keys = [UInt64](repeating: Self.empty, count: capacity)
        values = [Value?](repeating: nil, count: capacity)
        shift = UInt64(64 - capacity.trailingZeroBitCount)
        count = 0
        for (i, k) in oldKeys.enumerated() where k != Self.empty {
            insert(Int32(bitPattern: UInt32(truncatingIfNeeded: k)), oldValues[i]!)
        }
    }

    /// Removes `tid`'s value and returns it. The slots after it in its run move back where a probe finds them.
    @discardableResult
    public mutating func removeValue(forKey tid: Int32) -> Value? {
        guard var hole = slot(of: tid) else { return nil }
        let removed = values[hole]
        let mask = keys.count - 1
        var i = (hole + 1) & mask
        while keys[i] != Self.empty {
            // The entry at i may fill the hole if its home is not in (hole, i] (cyclically).
            let h = home(keys[i])
            let stays = hole <= i ? (hole < h && h <= i) : (hole < h || h <= i)
            if !stays {
                keys[hole] = keys[i]
                values[hole] = values[i]
                hole = i
            }
            i = (i + 1) & mask
        }
        keys[hole] = Self.empty
        values[hole] = nil
        count -= 1
        return removed
    }

    /// Empties the table and gives its storage back.
    public mutating func removeAll() {
        keys = []
        values = []
        count = 0
        shift = 64
    }

    /// The values, in no particular order.
    public var allValues: [Value] { values.compactMap { $0 } }
}

/// One for the process (a global is initialised once, on first use, thread-safely).
private let threadTableSeed = UInt64.random(in: 0 ... .max)

extension ThreadTable: Sendable where Value: Sendable {}

extension ThreadTable: Equatable where Value: Equatable {
    /// The same threads with equal values, wherever their slots are.
    public static func == (a: ThreadTable, b: ThreadTable) -> Bool {
        guard a.count == b.count else { return false }
        for (i, k) in a.keys.enumerated() where k != empty {
            guard b[Int32(bitPattern: UInt32(truncatingIfNeeded: k))] == a.values[i] else { return false }
        }
        return true
    }
}
