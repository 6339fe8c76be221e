import Exporter
import Foundation
import Schema
import Testing

/// A process that passes for a vmscope VMM and names new exits, causes and kinds each pass (issue 28, class 5):
/// the registry stops at the per-VM cap, names nobody defines get no series, and both are counted.
struct HostileReadingsTests {
    func hostile(pass: Int, vcpus: Int = 8) -> VMReading {
        var r = VMReading(pid: 9, name: "liar", vmm: .vmscope, vcpus: vcpus, residentBytes: nil, kvmStats: [:])
        let names = (0..<1000).map { ("INVENTED_\(pass)_\($0)", UInt64($0)) }
        r.userspaceExits = Dictionary(uniqueKeysWithValues: names + [("MMIO", 5), ("IO unassigned port", 1)])
        r.vmmMetrics = VMMetrics(vcpus: (0..<vcpus).map { .init(index: $0, state: .known(.running), exits: [], stats: []) },
                                 memoryFaultExits: [.init(source: .unknown("src-\(pass)"), isPrivate: true, count: 1)],
                                 conversions: [.init(cause: .unknown("cause-\(pass)"), toPrivate: true, requested: 1, done: 1)],
                                 injections: [(.unknown("kind-\(pass)"), 1)], faultsDropped: 0, privateBytes: 0, sharedBytes: 0,
                                 attributeRuns: 0, memslots: 0, conversionTimes: .init(last: 0, ns: [], dropped: 0))
        return r
    }

    /// The VM's series (its conversion-time histogram's bucket lines are one series, not counted).
    func seriesCount(_ text: String) -> Int {
        text.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.hasPrefix("vmscope_conversion_duration_seconds") && $0.contains("pid=\"9\"") }.count
    }

    @Test func inventedNamesGetNoSeriesAndTheCapHolds() {
        let store = MetricsStore()
        for pass in 0..<5 { store.apply([hostile(pass: pass)], collectionSeconds: 0) }
        var text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(!text.contains("INVENTED_") && !text.contains("src-") && !text.contains("cause-") && !text.contains("kind-"))
        #expect(text.contains(#"reason="MMIO""#) && text.contains(#"reason="IO unassigned port""#), "the VMM's own names stand")
        let refused = text.split(separator: "\n").first { $0.hasPrefix("vmscope_exporter_series_refused_total{pid=\"9\"") }
        #expect(refused.flatMap { Double($0.split(separator: " ").last ?? "") } == Double(5 * 1003), "\(refused ?? "none")")
        // A liar with a hundred thousand vCPUs: four state series each would be 400,000; the cap holds it.
        store.apply([hostile(pass: 5, vcpus: 100_000)], collectionSeconds: 0)
        text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(seriesCount(text) <= MetricsStore.seriesPerVM + 1, "\(seriesCount(text)) series")
    }
}
