import Foundation
import ProcessSupport
import Testing

extension TmuxPane {
    /// On the map: goes to 0x100000 (vCPU 0's working set), selects four cells, presses s; the screen with the
    /// question (answer it with y).
    func askToConvertFourCellsAtTheWorkingSet(wait: Double) -> String {
        keys(":", "goto 0x100000", "Enter")
        keys("v", "l", "l", "l", "v")
        _ = waitFor(wait) { $0.contains("selected") }
        keys("s")
        return waitFor(wait) { $0.contains("to shared? y/N") }
    }
}

/// The number after `label ` in the status bar or a pane, e.g. "faults 123".
func number(after label: String, in screen: String) -> Int? {
    guard let r = screen.range(of: label + " ") else { return nil }
    return Int(screen[r.upperBound...].prefix { $0.isNumber })
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct TUITests {
    @Test func demoShowsLiveViewsConvertsInjectsAndQuits() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo; echo VMSCOPE-EXIT=$?; sleep 60")
        // All four views with live data.
        var screen = t.waitFor(20) { s in
            s.contains(privateBackingMarker) && s.contains("running") && s.contains("vmm/MMIO") && s.contains("rip 0x")
        }
        for title in ["1 GFN map", "2 Faults", "3 Memslots", "4 vCPUs", "engine vmm", "policy convert"] {
            #expect(screen.contains(title), "no \(title) in:\n\(screen)")
        }
        #expect(screen.contains("vmm/MMIO"), "faults stream:\n\(screen)")

        // Select 1 MiB of vCPU 0's working set, convert it to shared, confirm.
        let mapBefore = screen.split(separator: "\n").prefix(20).map { String($0.prefix(80)) }
        screen = t.askToConvertFourCellsAtTheWorkingSet(wait: 3)
        #expect(screen.contains("Convert 1M at 0x100000 to shared? y/N"), "\(screen)")
        let faultsBefore = number(after: "faults", in: screen) ?? 0
        t.keys("y")
        screen = t.waitFor(10) { s in
            s.contains("to shared: done") && (number(after: "faults", in: s) ?? 0) >= faultsBefore + 50
        }
        #expect(screen.contains("convert 1M at 0x100000 to shared: done"), "\(screen)")
        #expect((number(after: "faults", in: screen) ?? 0) >= faultsBefore + 50, "faults \(faultsBefore) → \(number(after: "faults", in: screen) ?? 0)")
        // The guest converts its working set straight back as it touches it (about 100 ms for 1 MiB), so the
        // map shows that conversion only for a moment. 1 MiB at 128 MiB, which no vCPU touches, stays shared:
        // the map's rows change and show shared cells for as long as one cares to look.
        func mapRows(_ s: String) -> [String] { s.split(separator: "\n").prefix(20).map { String($0.prefix(80)) } }
        #expect(!mapBefore.joined().contains("░"), "all private before")
        t.keys(":", "convert 0x8000000 1M shared", "Enter")
        screen = t.waitFor(5) { $0.contains("convert 1M at 0x8000000 to shared: done") && mapRows($0).joined().contains("░") }
        #expect(screen.contains("convert 1M at 0x8000000 to shared: done"), "\(screen)")
        Thread.sleep(forTimeInterval: 0.5)
        let mapAfter = mapRows(t.capture())
        #expect(mapAfter != mapBefore, "the map did not change")
        #expect(mapAfter.contains { $0.contains("░░░░") }, "1 MiB = four adjacent 256 KiB cells shared:\n\(mapAfter.joined(separator: "\n"))")

        // Discard vCPU 0's working set under the selection: the guest reports (more) integrity errors. (The
        // conversion above discarded the private copy too, so the count may already be above zero.)
        screen = t.waitFor(10) { number(after: "integrity-errors", in: $0) != nil }
        Thread.sleep(forTimeInterval: 1)
        let errorsBefore = number(after: "integrity-errors", in: t.capture()) ?? 0
        t.keys("i")
        screen = t.waitFor(10) { $0.contains("Inject a fault") }
        t.keys("d")
        // The guest finds the damage on its next pass over the working set: seconds when the full suite loads
        // both cores (a 5 s wait ran out once, the discard done and the count not yet moved).
        screen = t.waitFor(20) { s in
            s.contains("inject discard into 1M at 0x100000: done") && (number(after: "integrity-errors", in: s) ?? 0) > errorsBefore
        }
        #expect(screen.contains("inject discard into 1M at 0x100000: done"), "\(screen)")
        #expect((number(after: "integrity-errors", in: screen) ?? 0) > errorsBefore, "\(screen)")

        // Help, then quit with status 0 and the shell back.
        t.keys("?")
        screen = t.waitFor(10) { $0.contains("Keys and terms") && $0.contains("convert the selection to shared") }  // the whole help drawn, not a capture mid-draw
        #expect(screen.contains("convert the selection to shared"), "\(screen)")
        t.keys("Escape")
        t.keys("q")
        screen = t.waitFor(10) { $0.contains("VMSCOPE-EXIT=") }
        #expect(screen.contains("VMSCOPE-EXIT=0"), "\(screen)")
        #expect(!screen.contains("1 GFN map"), "the terminal was restored")
    }

    @Test func ctrlCAndABadThemeAreHandled() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let theme = NSTemporaryDirectory() + "vmscope-bad-theme-\(getpid()).json"
        try "{\n  \"name\": \"bad\",\n  \"roles\": {\n    \"normal\": {\"fg\": \"mauve\"}\n  }\n}\n".write(toFile: theme, atomically: true, encoding: .utf8)
        defer { unlink(theme) }
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo --theme \(theme); echo VMSCOPE-EXIT=$?; ls -d /tmp/vmscope-demo-* 2>/dev/null | wc -l | sed 's/^/DEMO-DIRS=/'; sleep 60")
        let screen = t.waitFor(15) { $0.contains("2 Faults") && $0.contains("using theme default") }
        #expect(screen.contains("\(theme):4:") && screen.contains("using theme default"), "\(screen)")
        // This demo's own directory, from its process's command line (other demos, running beside this test or
        // cleaning up abandoned directories, change a count of them).
        let demo = try #require(t.pid.flatMap { childPid(of: $0) })
        let vmmArgs = (childPid(of: demo).flatMap { readCmdline($0) }) ?? []
        let dir = try #require(vmmArgs.firstIndex(of: "--socket").map { URL(fileURLWithPath: vmmArgs[$0 + 1]).deletingLastPathComponent().path },
                               "the demo's socket: \(vmmArgs)")
        #expect(FileManager.default.fileExists(atPath: dir))
        t.keys("C-c")
        let after = t.waitFor(10) { $0.contains("DEMO-DIRS=") }
        #expect(after.contains("VMSCOPE-EXIT=130"), "\(after)")
        #expect(!after.contains("1 GFN map"), "the terminal was restored")
        #expect(!FileManager.default.fileExists(atPath: dir), "the demo's private directory \(dir) is removed")
    }

    @Test func resizingRedrawsAndTooSmallSaysSo() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo; echo VMSCOPE-EXIT=$?; sleep 60", width: 120, height: 36)
        var screen = t.waitFor(15) { $0.contains("4 vCPUs") && $0.contains("running") }
        #expect(screen.contains("4 vCPUs"), "\(screen)")
        t.resize(width: 50, height: 12)
        screen = t.waitFor(5) { $0.contains("window too small") }
        #expect(screen.contains("window too small") && screen.contains("50×12"), "\(screen)")
        t.resize(width: 160, height: 48)
        screen = t.waitFor(5) { $0.contains("4 vCPUs") }
        #expect(screen.contains("4 vCPUs") && !screen.contains("window too small"), "\(screen)")
        #expect(screen.split(separator: "\n").first?.contains("policy convert") == true, "the status bar is redrawn at the top")
        t.keys("q")
        #expect(t.waitFor(10) { $0.contains("VMSCOPE-EXIT=") }.contains("VMSCOPE-EXIT=0"))
    }
}

/// A process's arguments (/proc/PID/cmdline).
func readCmdline(_ pid: Int32) -> [String]? {
    guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
    return d.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
}
