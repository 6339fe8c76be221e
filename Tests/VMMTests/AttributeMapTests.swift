import Testing
import TestSupport
@testable import VMM

/// A bit-per-page reference model, to check the interval map against on random operations.
struct PageArrayModel {
    var pages: [Bool]
    mutating func set(_ r: Range<UInt64>, _ p: Bool) { for g in r { pages[Int(g)] = p } }
    var runs: [AttributeRun] {
        var out: [AttributeRun] = []
        for (i, p) in pages.enumerated() {
            if let last = out.last, last.isPrivate == p, last.end == UInt64(i) * 4096 {
                out[out.count - 1].size += 4096
            } else {
                out.append(AttributeRun(gpa: UInt64(i) * 4096, size: 4096, isPrivate: p))
            }
        }
        return out
    }
}

@Suite struct AttributeMapTests {
    @Test func startsAsOneRun() {
        let map = AttributeMap(pageCount: 16, initiallyPrivate: true)
        #expect(map.allRuns == [AttributeRun(gpa: 0, size: 16 * 4096, isPrivate: true)])
        #expect(map.isPrivate(gfn: 15))
    }

    @Test func splitsAndMergesBack() {
        var map = AttributeMap(pageCount: 16, initiallyPrivate: true)
        map.set(pages: 4..<8, private: false)
        #expect(map.allRuns.map(\.isPrivate) == [true, false, true])
        let sizes: [UInt64] = [0x4000, 0x4000, 0x8000]
        #expect(map.runs(pages: 0..<16).map(\.size) == sizes)
        #expect(!map.isPrivate(gfn: 4) && !map.isPrivate(gfn: 7) && map.isPrivate(gfn: 8))
        map.set(pages: 4..<8, private: true)
        #expect(map.runCount == 1)
        #expect(map.flips.isEmpty)
    }

    @Test func edgesOfRAM() {
        var map = AttributeMap(pageCount: 8, initiallyPrivate: true)
        map.set(pages: 0..<2, private: false)
        map.set(pages: 6..<8, private: false)
        #expect(map.allRuns.map(\.isPrivate) == [false, true, false])
        #expect(!map.firstIsPrivate)
        map.set(pages: 0..<8, private: true)
        #expect(map.allRuns == [AttributeRun(gpa: 0, size: 8 * 4096, isPrivate: true)])
    }

    @Test func runCountPredictionMatchesTheChange() {
        var map = AttributeMap(pageCount: 64, initiallyPrivate: true)
        var rng = SplitMix64(state: 7)
        for _ in 0..<500 {
            let a = UInt64.random(in: 0..<64, using: &rng)
            let b = UInt64.random(in: a...64, using: &rng)
            let p = Bool.random(using: &rng)
            let predicted = map.runCountAfterSetting(pages: a..<b, private: p)
            map.set(pages: a..<b, private: p)
            #expect(map.runCount == predicted)
        }
    }

    @Test(arguments: [1, 2, 3, 42] as [UInt64])
    func agreesWithAPageArrayOnRandomChanges(seed: UInt64) {
        let n: UInt64 = 200
        var map = AttributeMap(pageCount: n, initiallyPrivate: seed % 2 == 0)
        var model = PageArrayModel(pages: Array(repeating: seed % 2 == 0, count: Int(n)))
        var rng = SplitMix64(state: seed)
        for step in 0..<400 {
            let a = UInt64.random(in: 0..<n, using: &rng)
            let b = UInt64.random(in: a...min(n, a + 40), using: &rng)
            let p = Bool.random(using: &rng)
            let before = map
            let window = map.set(pages: a..<b, private: p)
            model.set(a..<b, p)
            #expect(map.allRuns == model.runs, "seed \(seed) step \(step)")
            // Outside the window nothing changed.
            if window.lowerBound > 0 {
                #expect(map.runs(pages: 0..<window.lowerBound) == before.runs(pages: 0..<window.lowerBound))
            }
            // Runs always alternate (merged).
            let runs = map.allRuns
            for (x, y) in zip(runs, runs.dropFirst()) { #expect(x.isPrivate != y.isPrivate) }
            let counts = map.pageCounts(pages: 0..<n)
            #expect(counts.private == UInt64(model.pages.filter { $0 }.count))
        }
    }

    /// The view's iterator (one boundary read a run) yields what its subscript does, on every window of a map
    /// with runs of 1 to 10 pages, empty windows and the map's ends included.
    @Test func runViewIteratorEqualsItsSubscript() {
        let n: UInt64 = 48
        var map = AttributeMap(pageCount: n, initiallyPrivate: false)
        for range: Range<UInt64> in [3..<7, 10..<11, 20..<30, 40..<47] { map.set(pages: range, private: true) }
        #expect(map.runCount == 9)
        for a in 0...n {
            for b in a...n {
                let view = map.runView(pages: a..<b)
                let iterated = Array(view.makeIterator().sequence)
                let indexed = view.indices.map { view[$0] }
                #expect(iterated == indexed, "window \(a)..<\(b)")
                #expect(iterated.reduce(0) { $0 + $1.size } == (b - a) * AttributeMap.pageSize, "window \(a)..<\(b)")
            }
        }
    }

    @Test func clipsQueriedRuns() {
        var map = AttributeMap(pageCount: 10, initiallyPrivate: false)
        map.set(pages: 2..<5, private: true)
        let expected = [AttributeRun(gpa: 0x3000, size: 0x2000, isPrivate: true),
                        AttributeRun(gpa: 0x5000, size: 0x2000, isPrivate: false)]
        #expect(map.runs(pages: 3..<7) == expected)
        #expect(map.isUniform(pages: 2..<5, private: true))
        #expect(!map.isUniform(pages: 2..<6, private: true))
    }

    @Test func millionRunsOverATebibyteStayCompact() {
        let pages: UInt64 = (1 << 40) / 4096
        var map = AttributeMap(pageCount: pages, initiallyPrivate: true)
        // Build a million alternating runs by appending boundaries in order (each set is O(1) at the end).
        let stride = pages / 1_000_000
        var g: UInt64 = stride
        while map.runCount < 1_000_000 {
            map.set(pages: g..<(g + stride), private: false)
            g += 2 * stride
        }
        #expect(map.runCount >= 1_000_000)
        #expect(map.flips.capacity * 8 < 64 << 20)
        let r = map.runs(pages: (pages / 2)..<(pages / 2 + 10 * stride))
        #expect(r.count >= 10)
    }
}

private extension IteratorProtocol {
    /// The rest of this iterator as a sequence (so a test can collect exactly what `next()` yields).
    var sequence: AnySequence<Element> { var it = self; return AnySequence { AnyIterator { it.next() } } }
}
