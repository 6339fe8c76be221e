@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct RecordReplayTests {
    /// The issue's acceptance: 30 s of `vmscope demo` recorded with conversions and injections, replayed
    /// headless at T, equal to a snapshot taken live at T; then the same recording in the replay TUI.
    @Test func aRecordedDemoReplaysToWhatALiveSnapshotSaw() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let dir = NSTemporaryDirectory() + "vmscope-rr-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let demo = try TmuxPane("cd \(dir) && LANG=C.UTF-8 VMSCOPE_DIR=\(dir) \(Binary.url.path) demo; echo VMSCOPE-EXIT=$?; sleep 60",
                                width: 220, height: 50)
        defer { demo.kill() }
        var screen = demo.waitFor(20) { $0.contains("demo VM socket: ") && $0.contains("vmm/MMIO") }
        let socket = try #require(screen.components(separatedBy: "demo VM socket: ").dropFirst().first?
            .split(separator: " ").first.map(String.init), "the demo did not say where its socket is:\n\(screen)")

        // The recorder beside the inspector, for 30 s.
        let file = dir + "/demo.jsonl.gz"
        let recorder = try ChildProcess([Binary.url.path, "record", socket, "-o", file, "--duration", "30s"],
                                        redirects: .init(stderr: dir + "/record.log"))
        Thread.sleep(forTimeInterval: 2)
        // `R` in the inspector too: a second recording of the same time.
        demo.keys("R")
        screen = demo.waitFor(5) { $0.contains("● REC") }
        #expect(screen.contains("● REC") && screen.contains("recording to \(dir)/vmscope-recording-"), "\(screen)")
        // `S`: what the inspector shows, to a file beside it.
        let livePath = try pressSAndCheckSnapshot(demo, origin: "live")
        let liveTxt = try String(contentsOfFile: String(livePath.dropLast(5)) + ".txt", encoding: .utf8)
        #expect(liveTxt.contains("1 GFN map") && liveTxt.contains("4 vCPUs") && liveTxt.contains(privateBackingMarker), "\(liveTxt)")

        // Conversions and injections while the guest runs: from the inspector's keys and from vmscope ctl.
        demo.keys(":", "convert 0x8000000 1M shared", "Enter")
        screen = demo.waitFor(5) { $0.contains("convert 1M at 0x8000000 to shared: done") }
        #expect(screen.contains("to shared: done"), "\(screen)")
        func ctl(_ args: String...) throws -> JSON {
            let r = try Binary.run(["ctl", socket] + args)
            #expect(r.status == 0, "ctl \(args): \(r.stderr)")
            return try parseJSON(r.stdout)
        }
        _ = try ctl("inject-fault", #"{"kind": "flip", "gpa": 150994944, "size": 65536}"#)
        _ = try ctl("inject-fault", #"{"kind": "nmi", "vcpu": 1}"#)
        Thread.sleep(forTimeInterval: 3)

        // Quiesce the VM so an instant T has a well-defined state, change it, and snapshot it live at T.
        _ = try ctl("vcpu-control", #"{"action": "pause"}"#)
        _ = try ctl("set-memory-attributes", #"{"gpa": 167772160, "size": 2097152, "private": false}"#)
        _ = try ctl("inject-fault", #"{"kind": "revoke", "gpa": 184549376, "size": 8192}"#)
        Thread.sleep(forTimeInterval: 1.5)
        let liveText = try Binary.run(["snapshot", socket, "--json", "--faults", "200"])
        #expect(liveText.status == 0, "\(liveText.stderr)")
        let live = try parseJSON(liveText.stdout)
        Thread.sleep(forTimeInterval: 1.5)
        _ = try ctl("vcpu-control", #"{"action": "resume"}"#)
        // More activity after T, which the replay at T must not show.
        _ = try ctl("set-memory-attributes", #"{"gpa": 201326592, "size": 1048576, "private": false}"#)

        #expect(recorder.wait(seconds: 45) == 0, "vmscope record: \((try? String(contentsOfFile: dir + "/record.log", encoding: .utf8)) ?? "")")
        demo.keys("R")
        screen = demo.waitFor(10) { $0.contains("recording finished") }
        #expect(screen.contains("recording finished (stopped)"), "\(screen)")

        let recording = try Recording.read(path: file)
        #expect(recording.damage == nil && recording.endReason == "duration reached")
        #expect(recording.durationNs >= 30_000_000_000 && recording.durationNs < 32_000_000_000)
        let takenAt = try #require(live["taken-at-ns"]?.uint64Value)
        let t = Double(takenAt - recording.header.startedAtWallNs) / 1e9
        let dumped = try Binary.run(["replay", file, "--dump-at", String(format: "%.3f", t), "--json", "--faults", "200"])
        #expect(dumped.status == 0, "\(dumped.stderr)")
        let replayed = try parseJSON(dumped.stdout)
        #expect(replayed["origin"]?["kind"] == .string("recording"))
        for key in ["memslots", "attributes"] {
            #expect(replayed[key] == live[key], "\(key) at T=\(t) s differ:\nlive \(live[key]?.serialized ?? "")\nreplay \(replayed[key]?.serialized ?? "")")
        }
        let liveFaults = live["faults"]?["records"], replayedFaults = replayed["faults"]?["records"]
        // The demo's guest faults a few times a second: the list holds the records from before the recording
        // (its opening snapshot) and those that arrived as events, the injections' among them.
        #expect((liveFaults?.arrayValue?.count ?? 0) >= 10)
        #expect(liveFaults?.arrayValue?.contains { $0["action"] == .string("injected") } == true)
        #expect(replayedFaults == liveFaults, "fault lists at T differ: live \(liveFaults?.arrayValue?.last?.serialized ?? "") replay \(replayedFaults?.arrayValue?.last?.serialized ?? "")")
        // The state at T includes what was done just before it, and not what came after.
        let runs = live["attributes"]?["runs"]?.arrayValue ?? []
        #expect(runs.contains { $0["gpa"]?.uint64Value == 160 << 20 && $0["size"]?.uint64Value == 2 << 20 && $0["private"] == .bool(false) })
        #expect(!runs.contains { $0["gpa"]?.uint64Value == 192 << 20 && $0["private"] == .bool(false) })
        let atEnd = try parseJSON(try Binary.run(["replay", file, "--dump-at", "end"]).stdout)
        #expect(atEnd["attributes"]?["runs"]?.arrayValue?.contains { $0["gpa"]?.uint64Value == 192 << 20 && $0["private"] == .bool(false) } == true,
                "the conversion after T is in the recording's end state")

        // The R recording replays too.
        let rFiles = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("vmscope-recording-") }
        #expect(rFiles.count == 1)
        if let rFile = rFiles.first {
            let r = try Recording.read(path: dir + "/" + rFile)
            #expect(r.damage == nil && r.endReason == "stopped" && r.durationNs > 20_000_000_000, "\(r.damage ?? "")")
        }
        demo.keys("q")
        _ = demo.waitFor(10) { $0.contains("VMSCOPE-EXIT=") }

        // The replay TUI on the 30 s recording: timeline, pause, seek, bursts, S, refused mutations.
        let tui = try TmuxPane("cd \(dir) && LANG=C.UTF-8 VMSCOPE_DIR=\(dir) \(Binary.url.path) replay \(file) --speed 2; echo REPLAY-EXIT=$?; sleep 60",
                               width: 200, height: 50)
        defer { tui.kill() }
        screen = tui.waitFor(10) { $0.contains("REPLAY ▶") && $0.contains(privateBackingMarker) }
        #expect(screen.contains("REPLAY ▶") && screen.contains("/ 0:3") && screen.contains("×2"), "\(screen)")
        tui.keys("Space")
        _ = tui.waitFor(10) { $0.contains("REPLAY ‖") }
        // The paused frame read once tmux has all of it: curses sends only what changed, and a capture taken
        // between the new "‖" and the digits after it (one run saw 0.228 there, then 0.237) reads a stale position.
        Thread.sleep(forTimeInterval: 0.3)
        screen = tui.capture()
        let pausedAt = try #require(timelinePosition(screen), "\(screen)")
        // The seeks below need 10 s of recording after the pause: a first frame waited for in vain (this test once
        // waited for a GUEST_MEMFD flag a host without guest_memfd never shows) lets ×2 play 20 s of it, and `]`
        // then stops at the end, so `[ [` lands 20 s before the end instead of 10 s before the pause.
        try #require(Double(recording.durationNs) / 1e9 > pausedAt + 10.5, "paused at \(pausedAt) s of \(Double(recording.durationNs) / 1e9) s: \(screen)")
        Thread.sleep(forTimeInterval: 1)
        #expect(timelinePosition(tui.capture()) == pausedAt, "paused means the position stays")
        tui.keys("]")
        screen = tui.waitFor(10) { timelinePosition($0).map { abs($0 - pausedAt - 10) < 0.01 } ?? false }
        #expect(timelinePosition(screen).map { abs($0 - pausedAt - 10) < 0.01 } == true, "] moves 10 s: \(screen)")
        tui.keys("[", "[")
        screen = tui.waitFor(10) { timelinePosition($0).map { $0 < pausedAt } ?? false }
        #expect(timelinePosition(screen).map { $0 == max(0, pausedAt - 10) } == true, "[ [ moves back 20 s from +10: \(screen)")
        // { and }: to the starts of fault bursts. The 3 s pause before T makes one at least.
        let bursts = Replay(recording, file: file).burstsNs.map { Double($0 / 1_000_000) / 1000 }
        #expect(bursts.count >= 2, "bursts at \(bursts)")
        func at(_ x: Double) -> (String) -> Bool { { timelinePosition($0).map { abs($0 - x) < 0.0015 } ?? false } }
        let here = try #require(timelinePosition(screen))
        if let next = bursts.first(where: { $0 > here }) {
            tui.keys("}")
            screen = tui.waitFor(3, at(next))
            #expect(at(next)(screen), "} goes to the burst at \(next) s: \(screen)")
            if let after = bursts.first(where: { $0 > next }) {
                tui.keys("}")
                screen = tui.waitFor(3, at(after))
                #expect(at(after)(screen), "} again goes to \(after) s")
                tui.keys("{")
                screen = tui.waitFor(3, at(next))
                #expect(at(next)(screen), "{ goes back to \(next) s")
            }
        }
        tui.keys("p")
        screen = tui.waitFor(10) { $0.contains("read-only") }
        #expect(screen.contains("read-only: convert the selection to private (asks first) is disabled"), "\(screen)")
        _ = try pressSAndCheckSnapshot(tui, origin: "recording")
        tui.keys("q")
        screen = tui.waitFor(10) { $0.contains("REPLAY-EXIT=") }
        #expect(screen.contains("REPLAY-EXIT=0"), "\(screen)")
    }

    @Test func aKilledRecorderLeavesAFileThatReplaysAndSaysSo() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let file = NSTemporaryDirectory() + "vmscope-killed-\(getpid()).jsonl.gz"
        defer { unlink(file) }
        let recorder = try ChildProcess([Binary.url.path, "record", vmm.socket, "-o", file])
        Thread.sleep(forTimeInterval: 3)
        recorder.signal(SIGKILL)
        _ = recorder.wait(seconds: 5)
        let r = try Binary.run(["replay", file, "--dump-at", "end"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("not finished") || r.stderr.contains("no end entry") || r.stderr.contains("incomplete"), "\(r.stderr)")
        let s = try parseJSON(r.stdout)
        #expect(s["memslots"]?.arrayValue?.isEmpty == false && (s["faults"]?["records"]?.arrayValue?.count ?? 0) > 0)
        let offset = s["origin"]?["offset-ns"]?.uint64Value ?? 0
        #expect(offset > 2_000_000_000, "the file holds up to about the kill, not just the start: \(offset) ns")

        // Ctrl-C instead: a finished file.
        let finished = NSTemporaryDirectory() + "vmscope-int-\(getpid()).jsonl.gz"
        defer { unlink(finished) }
        let second = try ChildProcess([Binary.url.path, "record", vmm.socket, "-o", finished])
        Thread.sleep(forTimeInterval: 1.5)
        second.signal(SIGINT)
        #expect(second.wait(seconds: 10) == 0)
        let f = try Recording.read(path: finished)
        #expect(f.damage == nil && f.endReason == "stopped")
    }
}
