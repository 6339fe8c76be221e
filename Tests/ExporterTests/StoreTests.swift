import Exporter
import Foundation
import Schema
import Testing

/// The store maps cumulative readings onto Prometheus series without a VMM or a host: counters move by what grew,
/// gauges take the value, a VM that goes away loses its series, hostile names stay inside their quotes.
struct StoreTests {
    func reading(pid: Int32 = 7, name: String = "vm", exits: UInt64, faults: UInt64 = 0, times: VMMetrics.ConversionTimes? = nil) -> VMReading {
        var r = VMReading(pid: pid, name: name, vmm: .vmscope, vcpus: 2, residentBytes: 4096, kvmStats: ["exits": exits, "mmio_exits": exits / 2])
        if let times {
            r.vmmMetrics = VMMetrics(vcpus: [.init(index: 0, state: .known(.running), exits: [("MMIO", faults)], stats: [])],
                                     memoryFaultExits: [.init(source: .known(.vmm), isPrivate: true, count: faults)],
                                     conversions: [.init(cause: .known(.implicit), toPrivate: true, requested: faults, done: faults)],
                                     injections: [], faultsDropped: 0, privateBytes: 8192, sharedBytes: 4096, attributeRuns: 3,
                                     memslots: 3, conversionTimes: times)
        }
        return r
    }

    func value(_ text: String, _ series: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test func countersFollowTheSourceAndGaugesTakeTheValue() {
        let store = MetricsStore()
        store.apply([reading(exits: 100)], collectionSeconds: 0)
        var text = String(decoding: store.exposition(), as: UTF8.self)
        let exits = #"vmscope_kvm_exits_total{pid="7",name="vm",vmm="vmscope"}"#
        #expect(value(text, exits) == 100, "a counter starts at the count first seen:\n\(text)")
        store.apply([reading(exits: 250)], collectionSeconds: 0)
        text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(value(text, exits) == 250)
        // A source that started over (count went back) does not make the counter go back.
        store.apply([reading(exits: 10)], collectionSeconds: 0)
        store.apply([reading(exits: 30)], collectionSeconds: 0)
        text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(value(text, exits) == 270, "250, then +20 after the restart:\n\(text)")
        #expect(value(text, #"vmscope_kvm_exits_by_reason_total{pid="7",name="vm",vmm="vmscope",reason="mmio"}"#) == 135, "125, then +10 after the restart")
        #expect(value(text, #"vmscope_vcpus{pid="7",name="vm",vmm="vmscope"}"#) == 2)
        #expect(value(text, "vmscope_exporter_vms") == 1)
    }

    /// Issue 29: any VMM's conversions, timed by the trace, step by step, and the private bytes its traced map knows.
    @Test func tracedConversionStepsAreObservedPerStepAndTracedPrivateBytesAreAGauge() {
        let store = MetricsStore()
        var r = VMReading(pid: 8, name: "qemu-vm", vmm: .qemu, vcpus: 2, residentBytes: nil, kvmStats: [:])
        r.tracedConversionSteps = [[.request: 20_000, .convert: 3_000, .reentry: 700_000], [.convert: 40_000]]
        r.tracedPrivateBytes = 1 << 20
        r.tracedStepsDropped = 1
        store.apply([r], collectionSeconds: 0)
        r.tracedStepsDropped = 3
        r.tracedConversionSteps = [[.convert: 2_000]]   // each pass brings only the new ones
        store.apply([r], collectionSeconds: 0)
        let text = String(decoding: store.exposition(), as: UTF8.self)
        let l = #"pid="8",name="qemu-vm",vmm="qemu",source="trace""#
        #expect(value(text, "vmscope_conversion_latency_seconds_count{\(l),step=\"convert\"}") == 3, "\(text)")
        #expect(value(text, "vmscope_conversion_latency_seconds_bucket{\(l),step=\"convert\",le=\"0.000005\"}") == 2)
        #expect(value(text, "vmscope_conversion_latency_seconds_count{\(l),step=\"request\"}") == 1)
        #expect(value(text, "vmscope_conversion_latency_seconds_bucket{\(l),step=\"re-entry\",le=\"0.0005\"}") == 0)
        #expect(value(text, "vmscope_conversion_latency_seconds_bucket{\(l),step=\"re-entry\",le=\"0.001\"}") == 1)
        #expect(value(text, #"vmscope_traced_private_bytes{pid="8",name="qemu-vm",vmm="qemu"}"#) == 1_048_576)
        // Steps let go between passes are counted, not silent.
        #expect(value(text, #"vmscope_events_dropped_total{pid="8",name="qemu-vm",vmm="qemu",buffer="conversion-steps"}"#) == 3, "\(text)")
        // Gone, its series go too.
        store.apply([], collectionSeconds: 0)
        #expect(!String(decoding: store.exposition(), as: UTF8.self).contains("vmscope_conversion_latency_seconds_count{"))
    }

    @Test func conversionTimesAreObservedOnceAndMissedOnesCounted() {
        let store = MetricsStore()
        // The first pass only learns the numbering: 5 conversions before the exporter started are not replayed.
        store.apply([reading(exits: 1, faults: 5, times: .init(last: 5, ns: [], dropped: 0))], collectionSeconds: 0)
        #expect(store.conversionTimesSeen(pid: 7) == 5)
        store.apply([reading(exits: 2, faults: 9, times: .init(last: 9, ns: [2_000, 20_000, 3_000_000, 2_000_000_000], dropped: 1))], collectionSeconds: 0)
        let text = String(decoding: store.exposition(), as: UTF8.self)
        let l = #"pid="7",name="vm",vmm="vmscope""#
        #expect(value(text, "vmscope_conversion_duration_seconds_count{\(l)}") == 4, "\(text)")
        #expect(value(text, "vmscope_conversion_duration_seconds_bucket{\(l),le=\"0.000005\"}") == 1)
        #expect(value(text, "vmscope_conversion_duration_seconds_bucket{\(l),le=\"1.0\"}") == 3)
        #expect(value(text, "vmscope_conversion_duration_seconds_bucket{\(l),le=\"+Inf\"}") == 4)
        #expect(value(text, "vmscope_events_dropped_total{\(l),buffer=\"conversion-times\"}") == 1)
        #expect(value(text, "vmscope_memory_fault_exits_total{\(l),source=\"vmm\",private=\"true\"}") == 9)
        #expect(value(text, "vmscope_vcpu_state{\(l),vcpu=\"0\",state=\"running\"}") == 1)
        #expect(value(text, "vmscope_vcpu_state{\(l),vcpu=\"0\",state=\"paused\"}") == 0)
        #expect(store.conversionTimesSeen(pid: 7) == 9)
    }

    @Test func aVMThatGoesAwayHasItsSeriesRemoved() {
        let store = MetricsStore()
        store.apply([reading(pid: 1, exits: 1, times: .init(last: 0, ns: [], dropped: 0)), reading(pid: 2, exits: 1)], collectionSeconds: 0)
        store.apply([reading(pid: 2, exits: 5)], collectionSeconds: 0)
        let text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(!text.contains(#"pid="1""#), "\(text)")
        #expect(text.contains(#"pid="2""#))
        #expect(value(text, "vmscope_exporter_vms") == 1)
    }

    /// A VM renamed under the same pid (a QEMU's `-name` set by a restart that kept the pid, a process that renamed
    /// itself) has its series under the new name only: the old name's stayed beside them, frozen, until the pid went.
    @Test func aRenamedVMHasItsSeriesUnderTheNewNameOnly() {
        let store = MetricsStore()
        store.apply([reading(name: "before", exits: 10, times: .init(last: 0, ns: [], dropped: 0))], collectionSeconds: 0)
        store.apply([reading(name: "after", exits: 12, times: .init(last: 0, ns: [], dropped: 0))], collectionSeconds: 0)
        let text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(!text.contains(#"name="before""#), "\(text)")
        #expect(value(text, #"vmscope_kvm_exits_total{pid="7",name="after",vmm="vmscope"}"#) == 12, "a new series starts at the count first seen")
        #expect(value(text, #"vmscope_vcpus{pid="7",name="after",vmm="vmscope"}"#) == 2)
    }

    /// A process can name itself anything (QEMU's -name, a comm): quotes, backslashes and newlines stay escaped.
    @Test func hostileNamesStayInsideTheirLabel() {
        let store = MetricsStore()
        store.apply([reading(name: "a\"b\\c\nvmscope_fake 1", exits: 3)], collectionSeconds: 0)
        let text = String(decoding: store.exposition(), as: UTF8.self)
        #expect(text.contains(#"name="a\"b\\c\nvmscope_fake 1""#), "\(text)")
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("vmscope_fake") })
    }

    @Test(arguments: [("127.0.0.1:9100", "127.0.0.1", 9100), (":9100", "127.0.0.1", 9100), ("[::1]:0", "::1", 0),
                      ("0.0.0.0:65535", "0.0.0.0", 65535)])
    func listenAddressesParse(_ c: (String, String, Int)) throws {
        let (host, port) = try parseListenAddress(c.0)
        #expect(host == c.1 && port == c.2)
    }

    @Test(arguments: ["9100", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "[::1]9100", "a b:1", ":99999999999999999999"])
    func badListenAddressesAreRefusedByName(_ text: String) {
        #expect(throws: MetricsError.self) { try parseListenAddress(text) }
    }

    /// The reply of `query-metrics` survives its own encoding.
    @Test func queryMetricsReplyRoundTrips() throws {
        let m = reading(exits: 1, faults: 3, times: .init(last: 4, ns: [1, 2], dropped: 1)).vmmMetrics!
        let again = VMMetrics(json: try JSON.parse(m.json.serialized))
        #expect(again == m)
    }
}

