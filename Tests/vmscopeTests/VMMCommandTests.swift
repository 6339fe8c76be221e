import Foundation
import Testing

@Suite(.serialized) struct VMMCommandTests {
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func runsUntilSIGTERMThenRemovesTheSocket() throws {
        let vmm = try RunningVMM()
        let mode = (try FileManager.default.attributesOfItem(atPath: vmm.socket)[.posixPermissions] as? Int) ?? 0
        #expect(mode == 0o600)
        usleep(300_000)
        #expect(vmm.process.isRunning)
        vmm.stop()
        let log = String(decoding: vmm.log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(vmm.process.terminationStatus == 0, "\(log)")
        #expect(!FileManager.default.fileExists(atPath: vmm.socket))
        #expect(log.contains("engine=vmm"))
        #expect(log.contains("vCPU threads joined"))
    }

    @Test func badArgumentsAreRefusedBeforeAnythingStarts() throws {
        let r = try Binary.run(["vmm", "--socket", "/tmp/never-created.sock", "--ram", "12Q"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--ram"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/never-created.sock"))
        let f = try Binary.run(["vmm", "--socket", "/tmp/never-created.sock", "--allow-fault-injection"])
        #expect(f.status != 0)
        #expect(f.stderr.contains("--allow-mutations"))
        let ro = try Binary.run(["vmm", "--socket", "/tmp/never-created.sock", "--read-only", "--allow-mutations"])
        #expect(ro.status != 0 && ro.stderr.contains("--read-only refuses what --allow-mutations"), "\(ro.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/never-created.sock"))
    }

    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func readOnlyRefusesMemoryReadsAndSaysSo() throws {
        let vmm = try RunningVMM(["--read-only"])
        defer { vmm.stop() }
        let vm = try Binary.run(["ctl", vmm.socket, "query-vm"])
        #expect(vm.stdout.contains("\"memory-reads-allowed\": false") || vm.stdout.contains("\"memory-reads-allowed\":false"), "\(vm.stdout)")
        let r = try Binary.run(["ctl", vmm.socket, "read-memory", #"{"gpa": 0, "size": 16}"#])
        #expect(r.status == 1 && r.stderr.contains("PermissionDenied") && r.stderr.contains("--read-only"), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
    }

    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func kernelEngineWhereTheKernelLacksItIsUnsupported() throws {
        let socket = "/tmp/vmscope-kernel-\(getpid()).sock"
        // timeout: where the kernel engine can run, the VMM would run until signalled.
        let r = try Binary.run(["vmm", "--socket", socket, "--attribute-engine", "kernel", "--ram", "64M"],
                               prefix: ["/usr/bin/timeout", "-s", "TERM", "3"])
        // On kernels with a private-memory VM type this would run; on this project's machines it cannot.
        if r.status != 0 {
            #expect(r.status == 2)
            #expect(r.stderr.contains("Unsupported"))
            #expect(r.stderr.contains("KVM_CAP_MEMORY_ATTRIBUTES"))
            #expect(!FileManager.default.fileExists(atPath: socket))
        }
    }
}
