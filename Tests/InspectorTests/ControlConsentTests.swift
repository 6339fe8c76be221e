import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

/// Issue 27, item 6: P on a QEMU someone else started stopped the whole VM at once, one Shift from p. On a VM
/// vmscope did not start, pause, resume and injection ask first (y goes ahead, anything else cancels), unless
/// `--allow-control`; on vmscope's own VMM (its `--allow-mutations` is the consent) they act at once.
struct ControlConsentTests {
    static func model(qemu: Bool) -> InspectorModel {
        var m = InspectorModel()
        m.vm.ramSize = 64 << 20
        m.vm.name = "guest-a"
        m.vm.pid = 4242
        if qemu { m.vm.qemuVersion = "QEMU 9.2.0" }
        m.vcpus = [VCPURow(index: 0, state: .known(.running), lastExit: "HLT")]
        return m
    }

    @Test func pauseOnAQEMUVmscopeDidNotStartAsksFirst() throws {
        var u = ui()
        u.fit(Self.model(qemu: true), width: 160, height: 48)
        u.focus = .vcpus
        #expect(u.handle(.char("P")).isEmpty, "nothing happens before the answer")
        guard case .confirm(let prompt, _)? = u.overlay else { Issue.record("no question: \(String(describing: u.overlay))"); return }
        #expect(prompt.contains("Pause vCPU 0") && prompt.contains("guest-a (pid 4242)") && prompt.contains("did not start"), "\(prompt)")
        #expect(u.handle(.char("n")).isEmpty && u.overlay == nil, "anything but y cancels")
        _ = u.handle(.char("P"))
        #expect(u.handle(.char("y")) == [.act(.vcpu(index: 0, .pause))])
    }

    @Test func allowControlAndOwnVMMsActAtOnce() {
        var u = ui()
        u.allowControl = true
        u.fit(Self.model(qemu: true), width: 160, height: 48)
        u.focus = .vcpus
        #expect(u.handle(.char("P")) == [.act(.vcpu(index: 0, .pause))])
        var own = ui()
        own.fit(Self.model(qemu: false), width: 160, height: 48)
        own.focus = .vcpus
        #expect(own.handle(.char("P")) == [.act(.vcpu(index: 0, .pause))])
    }

    @Test func injectingIntoAQEMUAsksFirst() {
        var u = ui()
        u.fit(Self.model(qemu: true), width: 160, height: 48)
        _ = u.handle(.char("i"))
        #expect(u.handle(.char("n")).isEmpty)
        guard case .confirm(let prompt, let effect)? = u.overlay else { Issue.record("no question: \(String(describing: u.overlay))"); return }
        #expect(prompt.hasPrefix("Inject nmi into vCPU 0 of guest-a"), "\(prompt)")
        #expect(effect == .act(.inject(.nmi, vcpu: 0, gpa: 0, size: 4096)) || { if case .act(.inject(.nmi, _, _, _)) = effect { true } else { false } }())
    }
}
