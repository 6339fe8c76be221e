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

