@testable import Schema
import ControlProtocol
import Foundation
import Lab
import ProcessSupport
import Testing
import Glibc

/// Where the lab cannot start, each lab command says why in one line with the fix, and exits 2.
struct LabUnavailableTests {
    @Test func anUnbuiltLabIsNamedWithItsFix() throws {
        let empty = NSTemporaryDirectory() + "vmscope-nolab-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: empty) }
        let socket = empty + "/lab.sock"
        for args in [["lab", "run", "--socket", socket], ["lab", "exec", "--", "/bin/true"], ["demo", "--lab"]] {
            let r = try runProcess(Binary.url.path, args, environment: ["VMSCOPE_LAB_DIR": empty, "PATH": "/usr/bin:/bin"])
            #expect(r.status == 2, "\(args): \(r.status) \(r.stderr)")
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(args): \(r.stderr)")
            let expected = Lab.qemu == nil ? "apt-get install qemu-system-x86" : "run vmscope lab build"
            #expect(r.stderr.contains(expected), "\(args): \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: socket))
        }
    }

    /// A path another VMM serves, or a file that is not a socket, is refused before anything boots.
    @Test(.enabled(if: kvmPresent && labUnavailable == nil, "needs /dev/kvm (a VMM to serve the path) and a built lab"))
    func aPathInUseIsRefusedBeforeBooting() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let r = try runProcess(Binary.url.path, ["lab", "run", "--socket", vmm.socket])
        #expect(r.status == 2 && r.stderr.contains("is in use"), "\(r.status) \(r.stderr)")
        let file = NSTemporaryDirectory() + "vmscope-notasocket-\(getpid())"
        FileManager.default.createFile(atPath: file, contents: Data("keep".utf8))
        defer { unlink(file) }
        let f = try runProcess(Binary.url.path, ["lab", "run", "--socket", file])
        #expect(f.status == 2 && f.stderr.contains("is not a socket"), "\(f.status) \(f.stderr)")
        #expect((try? String(contentsOfFile: file, encoding: .utf8)) == "keep")
    }
}
