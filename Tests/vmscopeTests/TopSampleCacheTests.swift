@testable import HostTracing
import Foundation
import ProcessSupport
import Testing
import TestSupport

/// `top` and the exporter keep each VM's statistics files from one sample to the next. Those files hold their VM
/// alive, so a VM whose process has ended must be let go at the next sample, or `top` would keep a dead VM (its
/// memory, its debugfs directory) for as long as it runs.
@Suite(.serialized, .enabled(if: kvmPresent && getuid() == 0, "needs /dev/kvm and root (KVM's debugfs, another process's files)"))
struct TopSampleCacheTests {
    @Test func theKeptFilesCountAndAVMWhoseProcessEndsIsLetGo() throws {
        let dir = makeTestDirectory("tsc")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vmm = try startVMM(dir + "/vm.sock", log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        let cache = HostVMs.SampleCache()
        let first = try #require(try HostVMs.sample(cache: cache).first { $0.pid == vmm.pid }, "the VMM's VM is not in KVM's debugfs")
        let exits = try #require(first.stats["exits"], "no counters from the VMM's vCPU statistics files: \(first)")
        #expect(cache.kept.contains(first.directory))
        // Read again from the files kept (no new search within SampleCache.rescanNs): the running guest's exits grow.
        #expect(eventuallyTrue(10) { ((try? HostVMs.sample(cache: cache).first { $0.pid == vmm.pid }?.stats["exits"]) ?? nil).map { $0 > exits } ?? false },
                "the kept statistics files do not advance")
        _ = vmm.terminate()
        let after = try HostVMs.sample(cache: cache)
        #expect(!after.contains { $0.pid == vmm.pid }, "a VM whose process has ended is still shown")
        #expect(!cache.kept.contains(first.directory))
        // Nothing holds the VM any more: KVM frees it, and its debugfs directory goes.
        #expect(eventuallyTrue(10) { !FileManager.default.fileExists(atPath: "/sys/kernel/debug/kvm/" + first.directory) },
                "the VM outlives its process")
    }
}
