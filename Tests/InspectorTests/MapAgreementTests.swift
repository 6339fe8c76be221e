import HostTracing
import Schema
import Testing
@testable import Inspector

/// vmscope's own VMM beside KVM's traced map of it (issue 29): pages where they disagree, and the alarm once one
/// has for longer than the two take to catch up.
struct MapAgreementTests {
    /// The kernel engine keeps the map at the shared alias: the VMM's page g is KVM's gfn alias + g.
    static let alias: UInt64 = 0x80000

    static func vmm(_ runs: [(UInt64, UInt64, Bool)]) -> [AttributeRun] {
        runs.map { AttributeRun(gpa: $0.0 << 12, size: ($0.1 - $0.0) << 12, isPrivate: $0.2) }
    }

    @Test func pagesAreComparedAtTheAliasAndOnlyWhereBothKnow() {
        let vmm = Self.vmm([(0, 100, true), (100, 120, false), (120, 256, true)])
        // Agreeing: the trace knows 100..<120 shared and 130..<140 private (at the alias); the private view's own
        // gfns (below the alias) are not the map and are not compared.
        let agree = [TracedAttributes.Run(start: 5, end: 50, isPrivate: false),
                     TracedAttributes.Run(start: Self.alias + 100, end: Self.alias + 120, isPrivate: false),
                     TracedAttributes.Run(start: Self.alias + 130, end: Self.alias + 140, isPrivate: true)]
        let a = MapAgreement.disagreements(traced: agree, vmm: vmm, aliasGFN: Self.alias, pages: 256)
        #expect(a.pages.isEmpty && a.compared == 30)
        // The trace says 95..<105 shared: 95..<100 differ (the VMM has them private); past RAM is not compared.
        let differ = [TracedAttributes.Run(start: Self.alias + 95, end: Self.alias + 105, isPrivate: false),
                      TracedAttributes.Run(start: Self.alias + 250, end: Self.alias + 300, isPrivate: false)]
        let d = MapAgreement.disagreements(traced: differ, vmm: vmm, aliasGFN: Self.alias, pages: 256)
        #expect(d.pages == [95, 96, 97, 98, 99, 250, 251, 252, 253, 254, 255])
        #expect(d.compared == 16)
    }

    @Test func atMostTheLimitIsListed() {
        let vmm = Self.vmm([(0, 100_000, true)])
        let d = MapAgreement.disagreements(traced: [TracedAttributes.Run(start: Self.alias, end: Self.alias + 100_000, isPrivate: false)],
                                           vmm: vmm, aliasGFN: Self.alias, pages: 100_000)
        #expect(d.pages.count == MapAgreement.limit && d.compared == 100_000)
    }

    /// A page that disagrees only while a conversion is on its way is no alarm; one that stays is, and it goes once
    /// the two agree again.
    @Test func theAlarmNeedsAPageToDisagreeForTheGracePeriod() {
        var a = MapAgreement()
        let s: UInt64 = 1_000_000_000
        #expect(a.check([7, 8], compared: 10, nowNs: 10 * s) == nil)
        #expect(a.check([8], compared: 10, nowNs: 11 * s) == nil)          // 7 caught up
        #expect(a.check([7, 8], compared: 10, nowNs: 11 * s + s / 2) == nil)  // 7 again: its clock restarts
        let alarm = a.check([7, 8], compared: 10, nowNs: 12 * s)          // 8 for 2 s
        #expect(alarm?.hasPrefix("MAP DISAGREES: 1 page ") == true && alarm?.contains("first gfn 0x8") == true, "\(alarm ?? "nil")")
        #expect(a.check([7, 8], compared: 10, nowNs: 14 * s)?.hasPrefix("MAP DISAGREES: 2 pages") == true)
        #expect(a.check([], compared: 10, nowNs: 15 * s) == nil)
    }

    /// A page a conversion covered lately is not compared (the VMM's map may not have caught up); once the
    /// conversion is older than the grace period, it is.
    @Test func pagesConvertedLatelyAreLeftOut() {
        var recent = RecentConversions()
        recent.add((Self.alias + 10)..<(Self.alias + 12), atNs: 100)
        recent.add((Self.alias + 11)..<(Self.alias + 20), atNs: 200)
        recent.add((Self.alias + 40)..<(Self.alias + 41), atNs: 300)
        #expect(recent.excluding([5, 10, 19, 20, 40, 41], aliasGFN: Self.alias) == [5, 20, 41])
        recent.forget(before: 250)
        #expect(recent.excluding([5, 10, 19, 20, 40, 41], aliasGFN: Self.alias) == [5, 10, 19, 20, 41])
        recent.forget(before: 1000)
        #expect(recent.excluding([5, 40], aliasGFN: Self.alias) == [5, 40])
    }

    @Test func theAlarmIsOnTheStatusLineInEveryWidth() {
        var m = InspectorModel()
        m.vm.name = "lab"
        m.mapAlarm = "MAP DISAGREES: 3 pages where the VMM's map and KVM's traced one differ for over 2 s (first gfn 0x10)"
        for width in [80, 120, 200] {
            let s = Renderer().render(m, InspectorUI(), width: width, height: 24)
            #expect(s.lines[0].contains("MAP DISAGREES"), "\(width): \(s.lines[0])")
        }
    }
}
