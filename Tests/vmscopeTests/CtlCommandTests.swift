import Foundation
import Testing

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct CtlCommandTests {
    @Test func runsACommandAndPrintsTheReplyAsJSON() throws {
        let vmm = try RunningVMM(["--allow-mutations"])
        defer { vmm.stop() }
        let r = try Binary.run(["ctl", vmm.socket, "query-vm"])
        #expect(r.status == 0, "\(r.stderr)")
        let vm = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(vm?["attribute-engine"] as? String == "vmm")
        #expect(vm?["pid"] as? Int == Int(vmm.process.processIdentifier))

        let set = try Binary.run(["ctl", vmm.socket, "set-memory-attributes", #"{"gpa": 16777216, "size": 8192, "private": false}"#])
        #expect(set.status == 0, "\(set.stderr)")
        let q = try Binary.run(["ctl", vmm.socket, "query-memory-attributes", #"{"gpa": 16777216, "size": 8192}"#])
        #expect(q.stdout.contains(#""runs":[{"gpa":16777216,"size":8192,"private":false}]"#), "\(q.stdout)")
    }

    @Test func refusalsExitOneWithTheClassAndBadUsageChangesNothing() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let refused = try Binary.run(["ctl", vmm.socket, "set-memory-attributes", #"{"gpa": 0, "size": 4096, "private": false}"#])
        #expect(refused.status == 1)
        #expect(refused.stderr.hasPrefix("PermissionDenied: "), "\(refused.stderr)")
        #expect(refused.stdout.isEmpty)
        let unknown = try Binary.run(["ctl", vmm.socket, "no-such-command"])
        #expect(unknown.status == 1 && unknown.stderr.hasPrefix("CommandNotFound: "))
        let badJSON = try Binary.run(["ctl", vmm.socket, "query-memory-attributes", #"{"gpa": "#])
        #expect(badJSON.status != 0 && badJSON.status != 1)
        #expect(badJSON.stderr.contains("not JSON"))
        let notObject = try Binary.run(["ctl", vmm.socket, "query-memory-attributes", "[1]"])
        #expect(notObject.stderr.contains("one JSON object"))
        let noSocket = try Binary.run(["ctl", vmm.socket + ".missing", "query-vm"])
        #expect(noSocket.status == 2 && noSocket.stderr.contains("No such file"))
    }

    @Test func eventsArePrintedAsJSONLines() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let r = try Binary.run(["ctl", vmm.socket, "--events", "--count", "5", "--timeout", "20"])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 5)
        for line in lines {
            let e = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(e?["event"] is String && e?["data"] != nil && e?["timestamp"] != nil, "\(line)")
        }
    }
}

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
