import Testing
@testable import HostTracing

/// `top` finds the VMs among the names of KVM's debugfs directory (`PID-FD`), beside its statistics files.
struct VMDirectoryTests {
    @Test(arguments: [("1234-12", Int32(1234)), ("1-0", 1), ("2147483647-3", Int32.max), ("2147483648-3", nil), ("12", nil),
                      ("-12", nil), ("12-", nil), ("12-3-4", nil), ("exits", nil), ("halt_exits", nil), ("+12-3", nil),
                      ("12-x", nil), ("١٢-3", nil), ("", nil), ("99999999999-1", nil)])
    func aVMDirectoryIsAPIDADashAndAnFD(name: String, pid: Int32?) {
        #expect(HostVMs.vmDirectoryPID(name) == pid)
    }
}
