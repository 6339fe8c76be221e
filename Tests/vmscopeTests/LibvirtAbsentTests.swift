@testable import Schema
import ControlProtocol
import Foundation
import ProcessSupport
import Testing
import TestSupport

/// Without libvirt installed (here: a library name the loader cannot find), `attach libvirt:` says what to install
/// in one line, exit 2; the build and every other command never needed it.
struct LibvirtAbsentTests {
    @Test func aMissingLibvirtIsNamedWithItsPackage() throws {
        var environment = ProcessInfo.processInfo.environment
        environment["VMSCOPE_LIBVIRT_LIBRARY"] = "libvirt-not-here.so.0"
        let r = try runProcess(Binary.url.path, ["attach", "libvirt:any"], environment: environment)
        #expect(r.status == 2, "\(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1 && r.stderr.contains("libvirt is not installed") && r.stderr.contains("apt-get install libvirt0"), "\(r.stderr)")
    }
}
