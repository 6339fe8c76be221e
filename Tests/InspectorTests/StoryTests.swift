import Schema
import Testing
@testable import Inspector

/// The story line (issue 27, item 8): after a conversion, one plain line says what followed, from the records.
struct StoryTests {
    static let alias: UInt64 = 1 << 31

    static func fault(_ seq: UInt64, gpa: UInt64, vcpu: Int = 0, wantsPrivate: Bool = true, action: FaultAction = .converted,
                      atMs: UInt64 = 0) -> FaultRecord {
        FaultRecord(seq: seq, timeNs: 1_000_000_000 + atMs * 1_000_000, vcpu: vcpu, gpa: gpa, flags: wantsPrivate ? 8 : 0,
                    isPrivate: wantsPrivate, access: .read, source: .vmm, exit: .mmio, attribute: .shared, slot: 1, action: action)
    }

    /// A model of a VM with the alias at bit 31, a story started on 16 pages at 0x100000 made shared.
    static func model() -> InspectorModel {
        var m = InspectorModel()
        m.vm.sharedAliasBit = 31
        m.story = Story(gpa: 0x100000, size: 0x10000, to: .shared)
        return m
    }

    @Test func underPolicyConvertItSaysTheRangeWentBack() {
        var m = Self.model()
        #expect(m.story?.text == "16 pages at 0x100000 now shared → no access to them yet")
        // vCPU 0 touches 12 of them through its private view (two twice), and one page outside the range.
        let inRange = (0..<12).map { Self.fault(UInt64($0 + 1), gpa: 0x100000 + UInt64($0) * 4096) }
        m.apply(faults: FaultBatch(records: inRange + [Self.fault(13, gpa: 0x100000), Self.fault(14, gpa: 0x101000),
                                                       Self.fault(15, gpa: 0x200000)], dropped: 0), nowNs: 1)
        m.apply(event: .memoryAttributesChanged(gpa: 0x100000, size: 0x10000, isPrivate: true, cause: .init(.implicit), vcpu: 0), nowNs: 2)
        #expect(m.story?.text == "16 pages at 0x100000 now shared → vCPU 0 touched 12 through its private view → "
                + "14 memory faults → converted back to private (policy convert)")
    }

    @Test func theAliasCountsAsTheSamePagesAndPartialReturnsSayHowMany() {
        var m = Self.model()
        m.apply(faults: FaultBatch(records: [Self.fault(1, gpa: Self.alias | 0x103000, vcpu: 1, wantsPrivate: false),
                                             Self.fault(2, gpa: 0x104000, vcpu: 0)], dropped: 0), nowNs: 1)
        m.apply(event: .memoryAttributesChanged(gpa: 0x104000, size: 0x1000, isPrivate: true, cause: .init(.implicit), vcpu: 0), nowNs: 2)
        // A conversion by command over the range is not the policy's.
        m.apply(event: .memoryAttributesChanged(gpa: 0x100000, size: 0x1000, isPrivate: true, cause: .init(.command), vcpu: nil), nowNs: 3)
        #expect(m.story?.text == "16 pages at 0x100000 now shared → vCPUs 1,0 touched 2 through both views → "
                + "2 memory faults → converted back to private (1 of 16 pages) (policy convert)")
    }

    @Test func underPauseItSaysWhoStoppedAndWhetherItStillIs() {
        var m = Self.model()
        m.apply(faults: FaultBatch(records: [Self.fault(1, gpa: 0x100000, vcpu: 1, action: .paused)], dropped: 0), nowNs: 1)
        let story = try! #require(m.story)
        #expect(story.text(stopped: [1]).hasSuffix("→ vCPU 1 stopped on the fault (policy pause): P on it resumes"))
        #expect(story.text(stopped: []).hasSuffix("→ vCPU 1 stopped on the fault (policy pause), then resumed"))
    }

    @Test func underReportTheyStay() {
        var m = Self.model()
        m.apply(faults: FaultBatch(records: (1...500).map { Self.fault($0, gpa: 0x100000, action: .reported) }, dropped: 0), nowNs: 1)
        #expect(m.story?.text == "16 pages at 0x100000 now shared → vCPU 0 touched 1 through its private view → "
                + "500 memory faults → reported only (policy report): they stay shared")
    }

    /// What comes long after the first fault is the guest's ordinary traffic, and nothing once every page is back.
    @Test func itEndsOnceEveryPageIsBackOrAfterItsWindow() {
        var m = Self.model()
        m.apply(faults: FaultBatch(records: [Self.fault(1, gpa: 0x100000), Self.fault(2, gpa: 0x101000, atMs: 6000)], dropped: 0), nowNs: 1)
        #expect(m.story?.faults == 1)
        m.apply(event: .memoryAttributesChanged(gpa: 0x100000, size: 0x10000, isPrivate: true, cause: .init(.implicit), vcpu: 0), nowNs: 2)
        #expect(m.story?.settled == true)
        m.apply(faults: FaultBatch(records: [Self.fault(3, gpa: 0x102000, atMs: 10)], dropped: 0), nowNs: 3)
        #expect(m.story?.faults == 1)
    }

    /// Every vCPU stopped and no access yet: the line says why nothing happens.
    @Test func noAccessBecauseEveryVCPUIsStoppedIsSaid() {
        var m = Self.model()
        m.vcpus = [VCPURow(index: 0, state: .known(.faultStopped), lastExit: "MMIO"), VCPURow(index: 1, state: .known(.paused), lastExit: "MMIO")]
        let footer = Renderer.footerLines(m, InspectorUI(), width: 200).map(\.text).joined()
        #expect(footer.contains("no access to them yet (every vCPU is stopped: P on one resumes it)"), "\(footer)")
    }
}
