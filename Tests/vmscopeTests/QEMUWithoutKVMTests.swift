@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing
import TestSupport

@Suite(.enabled(if: qemuAvailable, "qemu-system-x86_64 is not installed (.ci/run installs qemu-system-x86)"))
struct QEMUWithoutKVMTests {
    /// A QEMU whose KVM is refused (as on a host where /dev/kvm is not the user's) runs TCG; the launcher says
    /// so, and the inspector says what a QEMU without KVM does not have rather than showing zeros.
    @Test func aQEMURefusedKVMRunsTCGSaysSoAndTheViewsSayWhatIsMissing() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-tcg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let wrapper = dir.appendingPathComponent("qemu-system-x86_64").path
        try """
            #!/bin/sh
            for a in "$@"; do
                if [ "$a" = kvm ]; then
                    echo "qemu-system-x86_64: -accel kvm: Could not access KVM kernel module: Permission denied" >&2
                    exit 1
                fi
            done
            exec \(try #require(QEMUInstance.binary)) "$@"

            """.write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        let qemu = try QEMUInstance(arguments: qemuConfigurations[0].arguments, monitors: 1, binary: wrapper)
        defer { qemu.stop() }
        #expect(qemu.accelerator == "tcg")
        #expect(qemu.fallbackReason?.contains("QEMU refused -accel kvm") == true && qemu.fallbackReason?.contains("Permission denied") == true,
                "\(qemu.fallbackReason ?? "nil")")

        let r = try Binary.run(["snapshot", qemu.qmpSockets[0], "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let s = try JSON.parse(r.stdout)
        #expect(s["vm"]?["accelerator"]?.stringValue == "tcg (KVM present, not used)")
        #expect(s["memslots"]?.arrayValue?.isEmpty == true)
        #expect(s["unavailable"]?["memslots"]?.stringValue?.contains("runs TCG, not KVM") == true, "\(s["unavailable"]?.serialized ?? "")")
        let vcpus = try #require(s["vcpus"]?.arrayValue)
        #expect(vcpus.count == qemuConfigurations[0].vcpus)
        #expect(vcpus.allSatisfy { $0["regs"]?["rip"] != nil && $0["stats"]?.objectMembers?.isEmpty == true }, "registers, no KVM stats")

        let text = try Binary.run(["snapshot", qemu.qmpSockets[0], "--text"])
        #expect(text.stdout.contains("runs TCG, not KVM") && text.stdout.contains("no KVM statistics: QEMU runs tcg"), "\(text.stdout)")
        #expect(text.stdout.contains("tcg (KVM present, not used)"))
    }
}
