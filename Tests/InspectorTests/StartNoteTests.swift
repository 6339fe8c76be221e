import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

/// Issue 27, item 9: the demo's bottom line kept its socket path where attach, replay and top show key hints.
struct StartNoteTests {
    @Test func theNoteGivesTheLineBackToTheKeyHintsAtTheFirstKey() throws {
        let m = ControlConsentTests.model(qemu: false)
        var u = ui()
        u.status = ("demo VM socket: /tmp/x/vm.sock (for vmscope ctl, snapshot, record)", false)
        u.noteUntilKey = true
        #expect(Renderer().render(m, u, width: 160, height: 48).lines.last?.hasPrefix("demo VM socket") == true)
        _ = u.handle(.char("j"))
        let last = Renderer().render(m, u, width: 160, height: 48).lines.last ?? ""
        #expect(last.hasPrefix("? help") && last.contains("q quit"), "\(last)")
        // A key's own message stays.
        _ = u.handle(.char("t"))
        #expect(u.status?.text.hasPrefix("theme") == true)
    }
}
