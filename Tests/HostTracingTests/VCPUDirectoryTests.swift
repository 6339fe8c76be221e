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

/// `top` finds the VMs among the names of KVM's debugfs directory (`PID-FD`), beside its statistics files.
struct VMDirectoryTests {
    @Test(arguments: [("1234-12", Int32(1234)), ("1-0", 1), ("2147483647-3", Int32.max), ("2147483648-3", nil), ("12", nil),
                      ("-12", nil), ("12-", nil), ("12-3-4", nil), ("exits", nil), ("halt_exits", nil), ("+12-3", nil),
                      ("12-x", nil), ("١٢-3", nil), ("", nil), ("99999999999-1", nil)])
    func aVMDirectoryIsAPIDADashAndAnFD(name: String, pid: Int32?) {
        #expect(HostVMs.vmDirectoryPID(name) == pid)
    }
}
