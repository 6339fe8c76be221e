import Foundation
import Testing

/// A QMP client nobody here wrote: Python's `qemu.qmp`, from PyPI, in a virtual environment under .build.
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ThirdPartyQMPClientTests {
    /// The venv's python; made (and `qemu.qmp` installed into it) when missing. `.ci/run` makes it first.
    static func python() throws -> String {
        if let p = ProcessInfo.processInfo.environment["VMSCOPE_QMP_PYTHON"] { return p }
        let venv = Binary.url.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("qmp-venv").path
        let python = venv + "/bin/python"
        if !FileManager.default.fileExists(atPath: python) {
            let made = try runProcess("/usr/bin/env", ["python3", "-m", "venv", venv])
            try #require(made.status == 0, "python3 -m venv: \(made.stderr)")
        }
        let check = try runProcess(python, ["-c", "import qemu.qmp"])
        if check.status != 0 {
            let pip = try runProcess(python, ["-m", "pip", "install", "--quiet", "qemu.qmp"])
            try #require(pip.status == 0, "pip install qemu.qmp: \(pip.stderr)")
        }
        return python
    }

    @Test func qemuQMPNegotiatesAndQueries() throws {
        let python = try Self.python()
        let vmm = try RunningVMM(["--vcpus", "2"])
        defer { vmm.stop() }
        let script = """
            import asyncio, json, sys
            from qemu.qmp import QMPClient, ExecuteError
            async def main():
                q = QMPClient('vmscope-test')
                await q.connect(sys.argv[1])
                slots = await q.execute('query-memslots')
                vcpus = await q.execute('query-vcpus')
                try:
                    await q.execute('set-memory-attributes', {'gpa': 0, 'size': 4096, 'private': False})
                    refused = None
                except ExecuteError as e:
                    refused = e.error_class
                print(json.dumps({'greeting': 'vmscope' in q.greeting._raw, 'slots': len(slots),
                                  'views': sorted({s['view'] for s in slots}),
                                  'vcpus': [v['index'] for v in vcpus], 'states': [v['state'] for v in vcpus],
                                  'refused': refused}))
                await q.disconnect()
            asyncio.run(asyncio.wait_for(main(), 20))
            """
        let r = try runProcess(python, ["-c", script, vmm.socket])
        #expect(r.status == 0, "\(r.stderr)")
        let out = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(out?["greeting"] as? Bool == true)
        #expect((out?["slots"] as? Int ?? 0) >= 2)
        // Private RAM, plus a shared slot whenever the guest's bounce buffer happens to be shared at that moment.
        let views = Set(out?["views"] as? [String] ?? [])
        #expect(views.contains("private") && views.isSubset(of: ["private", "shared"]), "\(views)")
        #expect(out?["vcpus"] as? [Int] == [0, 1])
        #expect(out?["refused"] as? String == "PermissionDenied")
    }
}
