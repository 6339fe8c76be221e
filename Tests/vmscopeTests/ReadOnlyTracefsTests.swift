import Foundation
import Testing
import TestSupport

extension TraceCLITests {
    /// A machine whose only tracefs is read-only (debugfs' `tracing`, mounted ro, and nothing at
    /// /sys/kernel/tracing: seen on one of these hosts): libtracefs takes the first tracefs in /proc/mounts, and every
    /// trace stopped at "instances is not writable". vmscope mounts /sys/kernel/tracing and traces there. Made here
    /// in a mount namespace of the test's own: a read-only bind of tracefs is the only one left.
    /// Whether this process may make a mount namespace (`unshare --mount`, util-linux): not in every container.
    static let mountNamespaces = FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare")
        && ((try? runProcess("/usr/bin/unshare", ["--mount", "/bin/true"]))?.status == 0)

    @Test(.enabled(if: mountNamespaces, "no mount namespace can be made here (unshare --mount, util-linux)"))
    func aReadOnlyTracefsFirstIsPassedOver() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let dir = makeTestDirectory("ro-tracefs")
        defer { rmdir(dir) }
        let script = """
            set -e
            mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
            mount --bind /sys/kernel/tracing \(dir)
            mount -o remount,bind,ro \(dir)
            umount -l /sys/kernel/debug 2>/dev/null || true
            while umount -l /sys/kernel/tracing 2>/dev/null; do :; done
            echo "TRACEFS: $(awk '$3 == "tracefs" { print $2, substr($4, 1, 2) }' /proc/self/mounts | tr '\\n' ' ')"
            status=0
            \(Binary.url.path) trace \(vmm.process.processIdentifier) --duration 2s --events kvm_userspace_exit || status=$?
            mountpoint -q /sys/kernel/tracing && echo "MOUNTED /sys/kernel/tracing"
            umount \(dir)
            exit $status
            """
        let r = try runProcess("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script])
        let only = r.stdout.split(separator: "\n").first { $0.hasPrefix("TRACEFS: ") } ?? ""
        try #require(only == "TRACEFS: \(dir) ro ", "the namespace was not made as meant: \(r.stdout)\(r.stderr)")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("tracing process \(vmm.process.processIdentifier)"), "\(r.stderr)")
        #expect(r.stdout.contains("kvm_userspace_exit"), "the VMM's exits were traced:\n\(r.stdout.prefix(2000))")
        #expect(r.stdout.contains("MOUNTED /sys/kernel/tracing"), "\(r.stdout.suffix(500))")
    }
}
