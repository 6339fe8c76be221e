import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

/// Issue 27, item 13: `top` showed `-` for a QEMU's exits without saying why, and did not mark its sort column.
struct TopLegendTests {
    static func rows() -> [HostVMs.Row] {
        let vmm = HostVMs.Sample(pid: 100, directory: "100-11", name: "vmscope", vcpus: 2,
                                 stats: ["exits": 1000, "mmio_exits": 10, "traced_userspace_exits": 5, HostVMs.Stat.tracedMemoryFaults: 2])
        let vmmLater = HostVMs.Sample(pid: 100, directory: "100-11", name: "vmscope", vcpus: 2,
                                      stats: ["exits": 3000, "mmio_exits": 30, "traced_userspace_exits": 9, HostVMs.Stat.tracedMemoryFaults: 8])
        let qemu = HostVMs.Sample(pid: 200, directory: "200-12", name: "guest", vcpus: 1, stats: [:],
                                  countersMissing: "KVM's counters unreadable: debugfs refuses it: Operation not permitted")
        return HostVMs.rows(before: [vmm, qemu], after: [vmmLater, qemu], intervalNs: 1_000_000_000)
    }

    @Test func aDashIsExplainedAndTheSortColumnMarked() {
        var view = TopView()
        view.rows = Self.rows()
        let screen = view.render(width: 200, height: 10).text
        let lines = screen.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[1].contains("▼EXITS/s") && !lines[1].contains("▼MMIO/s"), "\(lines[1])")
        #expect(lines.contains { $0.hasPrefix("- : pid 200: KVM's counters unreadable: debugfs refuses it") }, "\(screen)")
        _ = view.handle(.char("s"))
        let sorted = view.render(width: 200, height: 10).text.split(separator: "\n").map(String.init)
        #expect(sorted[1].contains("▼MMIO/s") && !sorted[1].contains("▼EXITS/s"), "\(sorted[1])")
        view.ascii = true
        #expect(view.render(width: 200, height: 10).text.contains("vMMIO/s"))
        // No tracing: the traced columns' dash says why when it is known.
        var untraced = Self.rows()[0]
        untraced.perSecond[HostVMs.Stat.tracedUserspaceExits] = nil
        #expect(TopView.dashLegend([untraced], notTraced: "tracing needs apt-get install libtracefs1 libtraceevent1")
                == "- in USEREXIT/s and MEMFLT/s: not traced: tracing needs apt-get install libtracefs1 libtraceevent1")
        // A kernel that does not trace conversions: PRIV's dash says why.
        view.rows = Array(Self.rows().prefix(1))
        #expect(TopView.dashLegend(view.shown)?.hasPrefix("- in PRIV: this kernel does not trace conversions") == true)
        // No row with a dash: no legend.
        view.rows[0].sample.stats[HostVMs.Stat.tracedPrivateBytes] = 1 << 20
        #expect(TopView.dashLegend(view.shown) == nil)
    }

    /// Issue 29: memory-fault exits a second per VM, from the traced exits to userspace (KVM_EXIT_MEMORY_FAULT).
    @Test func memoryFaultExitsHaveAColumn() throws {
        let rows = Self.rows()
        let header = TopView.columns
        let end = try #require(header.range(of: "MEMFLT/s")).upperBound
        let column = header.distance(from: header.startIndex, to: end)
        let vmm = TopView.line(rows[0]), qemu = TopView.line(rows[1])
        #expect(String(vmm.prefix(column)).hasSuffix(" 6"), "\(header)\n\(vmm)")
        #expect(String(qemu.prefix(column)).hasSuffix(" -"), "\(header)\n\(qemu)")
    }

    /// Issue 29: the private memory the trace saw converted, per VM (a lower bound, marked ≥), or `-`.
    @Test func tracedPrivateBytesHaveAColumn() throws {
        var rows = Self.rows()
        rows[0].sample.stats[HostVMs.Stat.tracedPrivateBytes] = 360_448
        let header = TopView.columns
        let column = header.distance(from: header.startIndex, to: try #require(header.range(of: "PRIV")).upperBound)
        #expect(String(TopView.line(rows[0]).prefix(column)).hasSuffix("≥352K"), "\(header)\n\(TopView.line(rows[0]))")
        #expect(String(TopView.line(rows[1]).prefix(column)).hasSuffix(" -"))
    }
}
