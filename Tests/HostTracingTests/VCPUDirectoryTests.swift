import Testing
@testable import HostTracing

/// `top` counts a VM's vCPUs by the `vcpuN` directories of its debugfs directory, among the statistics files.
struct VCPUDirectoryTests {
    @Test(arguments: [("vcpu0", true), ("vcpu17", true), ("vcpu", false), ("vcpux", false), ("vcpu1a", false), ("xvcpu1", false),
                      ("vcpu-1", false), ("exits", false), ("vcpu١", false)])
    func aVCPUDirectoryIsVcpuAndANumber(name: String, isVCPU: Bool) {
        #expect(HostVMs.isVCPUDirectory(name) == isVCPU)
    }
}
