import Foundation
import Testing
import VMM
import KVM

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

    /// Its log reader gone (`vmscope vmm ... 2>&1 | head -c 1`), the VMM lives on: the next log lines (a refused,
    /// audited command makes some) fail with EPIPE instead of killing it with SIGPIPE.
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func survivesItsLogReaderGoingAway() throws {
        let socket = NSTemporaryDirectory() + "vmscope-pipe-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = ["-c", "'\(Binary.url.path)' vmm --socket '\(socket)' --ram 64M 2>&1 | head -c 1 >/dev/null"]
        shell.standardOutput = FileHandle.nullDevice
        shell.standardError = FileHandle.nullDevice
        try shell.run()
        var up = false
        for _ in 0..<500 where !up { up = FileManager.default.fileExists(atPath: socket); if !up { usleep(10_000) } }
        try #require(up, "the VMM did not serve \(socket)")
        // head has read its byte and gone: every later write to the pipe is EPIPE.
        usleep(300_000)
        for _ in 0..<5 {
            let refused = try Binary.run(["ctl", socket, "set-memory-attributes", #"{"gpa": 0, "size": 4096, "private": false}"#])
            #expect(refused.stderr.contains("PermissionDenied"), "\(refused.stderr)")
        }
        let vm = try Binary.run(["ctl", socket, "query-vm"])
        #expect(vm.status == 0, "the VMM died with its log reader: \(vm.stderr)")
        // Stop it (it is the socket's peer) and let the shell end.
        let c = try Binary.run(["ctl", socket, "query-vm"])
        if let pidText = c.stdout.split(separator: ",").first(where: { $0.contains("\"pid\"") })?.split(separator: ":").last,
           let pid = Int32(pidText.trimmingCharacters(in: .whitespaces)) {
            kill(pid, SIGTERM)
        }
        shell.waitUntilExit()
        #expect(!FileManager.default.fileExists(atPath: socket))
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
            // The capability this kernel lacks first, from the probe the VMM itself uses.
            let caps = try KVMCapabilities.probe(try KVMSystem())
            let missing = AttributeEngineDecision.kernelMissing(caps)
            #expect(r.stderr.contains(missing), "\(r.stderr)")
            #expect(missing.contains("KVM_CAP_"))
            #expect(!FileManager.default.fileExists(atPath: socket))
        }
    }
}
