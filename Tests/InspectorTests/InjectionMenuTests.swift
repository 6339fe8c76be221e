import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

/// Issue 27, item 6: QEMU's injection menu offered kinds it then refused; it offers what the source can do.
struct InjectionMenuTests {
    @Test func theMenuOffersWhatTheSourceCanDo() {
        var m = ControlConsentTests.model(qemu: true)
        m.offeredInjections = [.nmi]
        var u = ui()
        u.allowControl = true
        u.fit(m, width: 160, height: 48)
        _ = u.handle(.char("i"))
        let screen = Renderer(ascii: false).render(m, u, width: 160, height: 48).text
        #expect(screen.contains("> nmi: NMI into vCPU 0") && !screen.contains("mce:") && !screen.contains("flip:"), "\(screen)")
        // The first letter of a kind not offered does nothing; Enter takes the one shown.
        #expect(u.handle(.enter) == [.act(.inject(.nmi, vcpu: 0, gpa: u.targetRange.gpa, size: u.targetRange.size))])
        // A menu left open while the source changes to one offering none closes at the next key (n was 0 in a %).
        _ = u.handle(.char("i"))
        var none = m
        none.offeredInjections = []
        u.fit(none, width: 160, height: 48)
        #expect(u.handle(.char("j")).isEmpty && u.overlay == nil)
        // vmscope's VMM offers all five.
        var own = ui()
        own.fit(ControlConsentTests.model(qemu: false), width: 160, height: 48)
        _ = own.handle(.char("i"))
        let all = Renderer(ascii: false).render(ControlConsentTests.model(qemu: false), own, width: 160, height: 48).text
        #expect(["mce:", "nmi:", "discard:", "revoke:", "flip:"].allSatisfy { all.contains($0) }, "\(all)")
    }
}
