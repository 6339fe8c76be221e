import Foundation
import VMM

/// Sizes of one benchmark run; `smoke` is tiny so `swift test` can run every benchmark quickly.
public struct BenchSizes: Sendable {
    public var mapBytes: UInt64
    public var mapRuns: Int
    public var vmRAM: UInt64
    public var vmChunk: UInt64
    public var vmRuns: Int
    public var repetitions: Int

    public static let full = BenchSizes(mapBytes: 1 << 40, mapRuns: 1_000_000, vmRAM: 1 << 40, vmChunk: 64 << 20,
                                        vmRuns: 16_000, repetitions: 101)
    public static let smoke = BenchSizes(mapBytes: 1 << 30, mapRuns: 1_000, vmRAM: 1 << 30, vmChunk: 4 << 20,
                                         vmRuns: 64, repetitions: 5)
}

/// A bit per page: the design the attribute map replaces, kept here as the benchmark's baseline.
struct PageBitmap {
    var words: [UInt64]
    let pageCount: UInt64

    init(_ map: AttributeMap) {
        pageCount = map.pageCount
        words = [UInt64](repeating: 0, count: Int((map.pageCount + 63) / 64))
        for run in map.allRuns where run.isPrivate {
            var p = run.gpa / AttributeMap.pageSize
            let end = run.end / AttributeMap.pageSize
            while p < end {
                if p % 64 == 0 && end - p >= 64 { words[Int(p / 64)] = ~0; p += 64; continue }
                words[Int(p / 64)] |= 1 << (p % 64)
                p += 1
            }
        }
    }

    /// The runs, found by scanning every word for attribute changes.
    func runs() -> [AttributeRun] {
        var out: [AttributeRun] = []
        var start: UInt64 = 0
        var current = words[0] & 1 == 1
        for (i, w) in words.enumerated() {
            var edges = w ^ ((w << 1) | (current ? 1 : 0))
            while edges != 0 {
                let page = UInt64(i) * 64 + UInt64(edges.trailingZeroBitCount)
                if page >= pageCount { break }
                out.append(AttributeRun(gpa: start * 4096, size: (page - start) * 4096, isPrivate: current))
                start = page
                current.toggle()
                edges &= edges - 1
            }
        }
        out.append(AttributeRun(gpa: start * 4096, size: (pageCount - start) * 4096, isPrivate: current))
        return out
    }

    /// Run count and private pages over all RAM, by popcount: the cheapest walk a bitmap allows.
    func summary() -> (runs: Int, privatePages: UInt64) {
        var edges = 0
        var privatePages: UInt64 = 0
        var previousBit: UInt64 = words[0] & 1
        let tailBits = pageCount % 64
        for (i, var w) in words.enumerated() {
            if i == words.count - 1 && tailBits != 0 { w &= (1 << tailBits) - 1 }
            privatePages &+= UInt64(w.nonzeroBitCount)
            var e = w ^ ((w << 1) | previousBit)
            if i == words.count - 1 && tailBits != 0 { e &= (1 << tailBits) - 1 }
            edges &+= e.nonzeroBitCount
            previousBit = w >> 63
        }
        return (edges + 1, privatePages)
    }
}

/// Run count and private pages over all RAM, walking the map's runs.
func summary(_ map: AttributeMap) -> (runs: Int, privatePages: UInt64) {
    var runs = 0
    var privatePages: UInt64 = 0
    for run in map.runView(pages: 0..<map.pageCount) {
        runs += 1
        if run.isPrivate { privatePages &+= run.size / AttributeMap.pageSize }
    }
    return (runs, privatePages)
}

/// A map over `bytes` of RAM with `runs` alternating runs of (nearly) equal length.
public func alternatingMap(bytes: UInt64, runs: Int) -> AttributeMap {
    let pages = bytes / AttributeMap.pageSize
    var map = AttributeMap(pageCount: pages, initiallyPrivate: true)
    let runPages = pages / UInt64(runs)
    for i in stride(from: 1, to: runs, by: 2) {
        let start = UInt64(i) * runPages
        let end = i == runs - 1 ? pages : start + runPages
        map.set(pages: start..<end, private: false)
    }
    return map
}

/// The attribute map on its own (no KVM): full-range and window queries, lookups, memory per run.
/// Runs in the callgrind walk.
let callgrindMapRuns = 65_536

public func attributeMapBenchmarks(_ sizes: BenchSizes, callgrindExecutable: String? = nil) -> [BenchResult] {
    let map = alternatingMap(bytes: sizes.mapBytes, runs: sizes.mapRuns)
    precondition(map.runCount == sizes.mapRuns, "built \(map.runCount) runs, wanted \(sizes.mapRuns)")
    let reps = max(sizes.repetitions / 4, 3)
    var sink = 0

    let bitmap = PageBitmap(map)
    let expected = summary(map)
    precondition(bitmap.summary() == expected, "bitmap baseline disagrees with the map")
    let bitmapScan = median(sample(reps) { _ in sink &+= bitmap.summary().runs }) / 1000
    let baseline = BenchResult(name: "bitmap-query-full-range-us", value: bitmapScan, unit: "us",
                               note: "baseline: a bit per page; run count and private pages by popcount")
    let full = median(sample(reps) { _ in sink &+= summary(map).runs }) / 1000
    let fullResult = BenchResult(name: "attr-query-1tib-1m-runs-us", value: full, unit: "us", target: .atMost(1000),
                                 baseline: baseline,
                                 note: "walk every run of \(sizes.mapRuns) over \(sizes.mapBytes >> 30) GiB (runView, no copy)")
    let array = median(sample(reps) { _ in sink &+= map.allRuns.count }) / 1000
    let arrayResult = BenchResult(name: "attr-runs-array-us", value: array, unit: "us", baseline: fullResult,
                                  note: "the same runs copied into a new array (allocation and page faults)")

    var rng = SystemRandomNumberGenerator()
    let windowPages: UInt64 = min((1 << 30) / 4096, map.pageCount)
    let starts = (0..<1000).map { _ in UInt64.random(in: 0...(map.pageCount - windowPages), using: &rng) }
    let window = median(sample(sizes.repetitions) { i in
        sink &+= map.runs(pages: starts[i % starts.count]..<(starts[i % starts.count] + windowPages)).count
    }) / 1000
    let gfns = (0..<4096).map { _ in UInt64.random(in: 0..<map.pageCount, using: &rng) }
    let lookup = median(sample(sizes.repetitions) { _ in
        for g in gfns where map.isPrivate(gfn: g) { sink &+= 1 }
    }) / Double(gfns.count)

    let bytesPerRun = Double(map.flips.capacity * MemoryLayout<UInt64>.stride + MemoryLayout<AttributeMap>.size)
        / Double(map.runCount)
    let bitmapBytesPerRun = Double(bitmap.words.count * 8) / Double(map.runCount)
    let bitmapBytes = BenchResult(name: "bitmap-bytes-per-run", value: bitmapBytesPerRun, unit: "B",
                                  note: "baseline: a bit per page")
    if sink == 42 { print("") }  // keeps the optimiser from dropping the queries
    // Instructions per run of the same walk, which repeat exactly where its time does not.
    let instr = callgrindExecutable.flatMap { callgrindInstructionsPerRecord($0, path: "attr-walk", records: callgrindMapRuns) }.map {
        BenchResult(name: "attr-query-instr-per-run", value: $0, unit: "instr",
                    note: "valgrind --tool=callgrind, the walk only (--toggle-collect) after one pass not counted, \(callgrindMapRuns) runs over 1024 GiB")
    }
    return [
        baseline, fullResult] + (instr.map { [$0] } ?? []) + [arrayResult,
        BenchResult(name: "attr-query-1gib-window-us", value: window, unit: "us",
                    note: "runs in a random 1 GiB window (about \(Int(windowPages) * sizes.mapRuns / Int(map.pageCount)) runs)"),
        BenchResult(name: "attr-lookup-ns", value: lookup, unit: "ns", note: "attribute of one random GFN"),
        bitmapBytes,
        BenchResult(name: "attr-bytes-per-run", value: bytesPerRun, unit: "B", target: .atMost(64), baseline: bitmapBytes),
    ]
}
