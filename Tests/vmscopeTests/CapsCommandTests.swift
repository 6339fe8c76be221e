import Foundation
import KVM
import Testing
import TestSupport

let kvmPresent = FileManager.default.fileExists(atPath: KVMSystem.defaultPath)

/// What the memslot pane shows of the vmm engine's private view on this host, from the host's own answer
/// (`HostKVM`): the GUEST_MEMFD flag where a default VM has guest_memfd, else the memfd fallback's backing name.
let privateBackingMarker = HostKVM.guestMemfd ? "GUEST_MEMFD" : "memfd"

@Suite struct CapsCommandTests {
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func jsonMatchesWhatTheKernelReports() throws {
        let result = try Binary.run(["caps", "--json"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        let json = try #require(object)
        // Ask the kernel directly, not through the code under test.
        let system = try KVMSystem()
        #expect(json["guest_memfd"] as? Bool == (try system.check(.guestMemfd) != 0))
        let vm = try system.createVM()
        let kernelTracksPrivate = try vm.check(.memoryAttributes) & Int(MemoryAttributes.private.rawValue) != 0
        #expect(json["memory_attributes"] as? Bool == kernelTracksPrivate)
        #expect(json["nr_memslots"] as? Int == (try system.check(.nrMemslots)))
        #expect(json["api_version"] as? Int == (try system.apiVersion()))
        #expect(json["attribute_engine"] as? String == (kernelTracksPrivate ? "kernel" : "vmm"))
        let plan = try #require(json["plan"] as? [[String: String]])
        let attributes = plan.first { $0["capability"] == "KVM_CAP_MEMORY_ATTRIBUTES" }
        #expect(attributes?["vmscope"]?.hasPrefix("attribute engine: ") == true)
        for item in plan { #expect(item["vmscope"]?.isEmpty == false, "\(item)") }
    }

    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func tableNamesEveryCapabilityTheIssueLists() throws {
        let result = try Binary.run(["caps"])
        #expect(result.status == 0)
        for name in ["KVM_GET_API_VERSION", "KVM_CAP_VM_TYPES", "KVM_CAP_USER_MEMORY2", "KVM_CAP_GUEST_MEMFD",
                     "KVM_CAP_GUEST_MEMFD_FLAGS", "KVM_CAP_MEMORY_ATTRIBUTES", "KVM_CAP_MEMORY_FAULT_INFO",
                     "KVM_CAP_EXIT_HYPERCALL", "KVM_CAP_BINARY_STATS_FD", "KVM_CAP_NR_MEMSLOTS", "KVM_CAP_MCE",
                     "KVM_CAP_DIRTY_LOG_RING"] {
            #expect(result.stdout.contains(name), "missing \(name)")
        }
    }

    @Test func missingDeviceIsOneLineNamingTheDeviceAndTheFix() throws {
        let result = try Binary.run(["caps", "--device", "/nonexistent/kvm"])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("/nonexistent/kvm"))
        #expect(result.stderr.contains("ENOENT"))
        #expect(result.stderr.contains("modprobe"))
    }

    /// Without permission on the device: run the binary as `nobody` against a copy of the device node's mode.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv"),
                   "needs root and setpriv to drop to an unprivileged user"))
    func deniedDeviceIsOneLineNamingTheGroupFix() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vmscope-caps-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let copy = dir.appendingPathComponent("vmscope")
        try FileManager.default.copyItem(at: Binary.url, to: copy)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir.path)
        let device = dir.appendingPathComponent("kvm")
        try Data().write(to: device)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: device.path)
        // The copy was written through a file descriptor that a process forked meanwhile by a test running in
        // parallel may hold until it execs: exec then fails with ETXTBSY for a moment. Wait that out (≤ 5 s).
        var result = try Binary.run(["caps", "--device", device.path], executable: copy,
                                    prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        for _ in 0..<50 where result.status == 126 && result.stderr.contains("Text file busy") {
            usleep(100_000)
            result = try Binary.run(["caps", "--device", device.path], executable: copy,
                                    prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        }
        #expect(result.status == 2, "stderr: \(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1)
        #expect(result.stderr.contains("EACCES"))
        #expect(result.stderr.contains("kvm"))
        #expect(result.stderr.contains(device.path))
    }

    @Test func unknownOptionIsAUsageError() throws {
        let result = try Binary.run(["caps", "--bogus"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("--bogus"))
    }
}
