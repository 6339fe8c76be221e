import Schema
import Algorithms
/// The private/shared attribute of every guest page, kept as the GFNs where the attribute flips.
///
/// Adjacent runs with the same attribute are always merged, so the attribute alternates from run to run and
/// the map needs only the first run's attribute plus one sorted `UInt64` per run boundary: memory is O(runs)
/// (a million runs over 1 TiB cost 8 MB), a lookup is a binary search, and a change rewrites only the
/// boundaries inside the changed range.
public struct AttributeMap: Sendable, Equatable {
    public static let pageSize: UInt64 = 4096

    /// Number of 4 KiB pages covered (RAM size / 4096).
    public let pageCount: UInt64
    /// The attribute of GFN 0.
    public private(set) var firstIsPrivate: Bool
    /// Sorted GFNs in `1..<pageCount` where the attribute differs from the page before.
    public private(set) var flips: [UInt64]

    public init(pageCount: UInt64, initiallyPrivate: Bool) {
        precondition(pageCount > 0)
        self.pageCount = pageCount
        self.firstIsPrivate = initiallyPrivate
        self.flips = []
    }

    public var runCount: Int { flips.count + 1 }

    /// Index of the first flip greater than `gfn` (= number of flips at or below it).
    private func upperIndex(_ gfn: UInt64) -> Int {
        flips.partitioningIndex { $0 > gfn }
    }

    /// Index of the first flip at or above `gfn`.
    private func lowerIndex(_ gfn: UInt64) -> Int {
        flips.partitioningIndex { $0 >= gfn }
    }

    public func isPrivate(gfn: UInt64) -> Bool {
        precondition(gfn < pageCount, "gfn outside RAM")
        return firstIsPrivate != (upperIndex(gfn) % 2 == 1)
    }

    /// The run (in pages) containing `gfn`.
    public func run(containing gfn: UInt64) -> (start: UInt64, end: UInt64, isPrivate: Bool) {
        let i = upperIndex(gfn)
        let start = i == 0 ? 0 : flips[i - 1]
        let end = i == flips.count ? pageCount : flips[i]
        return (start, end, firstIsPrivate != (i % 2 == 1))
    }

    /// The runs overlapping `pages`, clipped to it, in order, as a collection over the map's own storage:
    /// nothing is copied or allocated, so walking a million runs costs about as much as reading their boundaries.
    public func runView(pages: Range<UInt64>) -> AttributeRunView {
        precondition(pages.upperBound <= pageCount)
        let first = upperIndex(pages.lowerBound)
        let last = pages.isEmpty ? first : lowerIndex(pages.upperBound)
        return AttributeRunView(flips: flips, pageCount: pageCount, firstIsPrivate: firstIsPrivate, pages: pages,
                             indices: first..<(pages.isEmpty ? first : last + 1))
    }

    /// The runs overlapping `pages`, clipped to it, in order.
    public func runs(pages: Range<UInt64>) -> [AttributeRun] {
        Array(runView(pages: pages))
    }

    /// Every run, in order.
    public var allRuns: [AttributeRun] { runs(pages: 0..<pageCount) }

    /// Private and shared page counts inside `pages`, without materialising the runs.
    public func pageCounts(pages: Range<UInt64>) -> (private: UInt64, shared: UInt64) {
        var priv: UInt64 = 0
        var i = upperIndex(pages.lowerBound)
        var start = pages.lowerBound
        while start < pages.upperBound {
            let end = min(i == flips.count ? pageCount : flips[i], pages.upperBound)
            if firstIsPrivate != (i % 2 == 1) { priv += end - start }
            start = end
            i += 1
        }
        return (priv, UInt64(pages.count) - priv)
    }

    /// What `set(pages:private:)` would do: the flips to remove, the ones to put in their place.
    private func plan(_ pages: Range<UInt64>, _ toPrivate: Bool) -> (lo: Int, hi: Int, new: [UInt64], first: Bool) {
        let a = pages.lowerBound, b = pages.upperBound
        let lo = lowerIndex(a)           // flips >= a
        let hi = upperIndex(b)           // flips <= b are replaced
        var new: [UInt64] = []
        var first = firstIsPrivate
        if a == 0 {
            first = toPrivate
        } else if isPrivate(gfn: a - 1) != toPrivate {
            new.append(a)
        }
        if b < pageCount && isPrivate(gfn: b) != toPrivate {
            new.append(b)
        }
        return (lo, hi, new, first)
    }

    /// The number of runs the map would have after `set(pages:private:)`.
    public func runCountAfterSetting(pages: Range<UInt64>, private toPrivate: Bool) -> Int {
        guard !pages.isEmpty else { return runCount }
        let p = plan(pages, toPrivate)
        return flips.count - (p.hi - p.lo) + p.new.count + 1
    }

    /// Sets every page in `pages` to `toPrivate`, merging with equal neighbours.
    ///
    /// Returns the page window whose runs may differ from before (from the start of the run that held
    /// `pages.lowerBound - 1` to the end of the run that holds `pages.upperBound`); outside it nothing changed.
    @discardableResult
    public mutating func set(pages: Range<UInt64>, private toPrivate: Bool) -> Range<UInt64> {
        precondition(pages.upperBound <= pageCount, "range outside RAM")
        guard !pages.isEmpty else { return pages }
        let window = affectedWindow(pages)
        let p = plan(pages, toPrivate)
        flips.replaceSubrange(p.lo..<p.hi, with: p.new)
        firstIsPrivate = p.first
        return window
    }

    /// The pages whose runs a change of `pages` can touch: the run before it, the range, the run after it.
    public func affectedWindow(_ pages: Range<UInt64>) -> Range<UInt64> {
        let start = pages.lowerBound == 0 ? 0 : run(containing: pages.lowerBound - 1).start
        let end = pages.upperBound >= pageCount ? pageCount : run(containing: pages.upperBound).end
        return start..<end
    }

    /// True when every page in `pages` already has attribute `toPrivate`.
    public func isUniform(pages: Range<UInt64>, private toPrivate: Bool) -> Bool {
        guard !pages.isEmpty else { return true }
        let r = run(containing: pages.lowerBound)
        return r.isPrivate == toPrivate && r.end >= pages.upperBound
    }
}

/// Runs of an `AttributeMap` clipped to a page range (`AttributeMap.runView(pages:)`). Index `i` is the run
/// that starts at the map's `i`-th flip (0: the run starting at page 0).
public struct AttributeRunView: RandomAccessCollection, Sendable {
    @usableFromInline let flips: [UInt64]
    @usableFromInline let pageCount: UInt64
    @usableFromInline let firstIsPrivate: Bool
    @usableFromInline let pages: Range<UInt64>
    public let indices: Range<Int>

    @inlinable public var startIndex: Int { indices.lowerBound }
    @inlinable public var endIndex: Int { indices.upperBound }

    @inlinable public subscript(i: Int) -> AttributeRun {
        precondition(indices.contains(i), "run index out of range")
        let start = Swift.max(i == 0 ? 0 : flips[i - 1], pages.lowerBound)
        let end = Swift.min(i == flips.count ? pageCount : flips[i], pages.upperBound)
        return AttributeRun(gpa: start &* AttributeMap.pageSize, size: (end &- start) &* AttributeMap.pageSize,
                            isPrivate: firstIsPrivate != (i & 1 == 1))
    }

    /// Walks the runs reading each boundary once (the subscript reads two and clips both ends): this is the
    /// loop a full-range query over a million runs spends its time in.
    @inlinable public func makeIterator() -> Iterator {
        let start = indices.isEmpty ? pages.upperBound : pages.lowerBound
        return Iterator(flips: flips, pageCount: pageCount, upper: pages.upperBound, index: indices.lowerBound,
                        end: indices.upperBound, start: start,
                        isPrivate: firstIsPrivate != (indices.lowerBound & 1 == 1))
    }

    public struct Iterator: IteratorProtocol {
        @usableFromInline let flips: [UInt64]
        @usableFromInline let pageCount: UInt64
        @usableFromInline let upper: UInt64
        @usableFromInline var index: Int
        @usableFromInline let end: Int
        @usableFromInline var start: UInt64
        @usableFromInline var isPrivate: Bool

        @inlinable init(flips: [UInt64], pageCount: UInt64, upper: UInt64, index: Int, end: Int, start: UInt64,
                        isPrivate: Bool) {
            (self.flips, self.pageCount, self.upper, self.index, self.end, self.start, self.isPrivate) =
                (flips, pageCount, upper, index, end, start, isPrivate)
        }

        @inlinable public mutating func next() -> AttributeRun? {
            guard index < end else { return nil }
            let boundary = index < flips.count ? flips[index] : pageCount
            let stop = Swift.min(boundary, upper)
            let run = AttributeRun(gpa: start &* AttributeMap.pageSize, size: (stop &- start) &* AttributeMap.pageSize,
                                   isPrivate: isPrivate)
            start = boundary
            isPrivate.toggle()
            index &+= 1
            return run
        }
    }
}
