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

    /// A source's note while the start note is up waits behind it: on a machine without libtracefs the demo's
    /// socket path was replaced by "no kernel cross-check" (tracing's libraries missing) before anyone could read it.
    @Test func aSourcesNoteWaitsItsTurnBehindTheStartNote() {
        final class NoticeSource: VMSource {
            var notices = ["no kernel cross-check: tracing needs apt-get install libtracefs1 libtraceevent1"]
            func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool { model.vm.name = "noted"; return true }
            func refusal(_ action: InspectorAction) -> String? { nil }
            func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome { .done(detail: "") }
            func takeNotice() -> (text: String, isError: Bool)? { notices.isEmpty ? nil : (notices.removeFirst(), false) }
        }
        let driver = InspectorDriver(source: NoticeSource(), ui: InspectorUI(themeNames: ["default"], ascii: true, readOnly: false))
        driver.ui.status = ("demo VM socket: /tmp/x/vm.sock (for vmscope ctl, snapshot, record)", false)
        driver.ui.noteUntilKey = true
        var renderer = Renderer(ascii: true)
        func bottom(_ now: UInt64) -> String {
            _ = driver.tick(nowNs: now, width: 160, height: 48)
            return driver.frame(&renderer, width: 160, height: 48, nowNs: now).lines.last ?? ""
        }
        #expect(bottom(1).hasPrefix("demo VM socket"), "\(bottom(1))")
        _ = driver.handle(.char("j"), nowNs: 2)
        #expect(bottom(3).hasPrefix("no kernel cross-check"), "\(bottom(3))")
        _ = driver.handle(.char("j"), nowNs: 4)
        let last = bottom(5)
        #expect(last.hasPrefix("? help") && last.contains("q quit"), "\(last)")
    }
}
