import Foundation
import ProcessSupport
import Testing

/// A new user's first hour (issue 27): what the command line says of itself, refusing to overwrite a file, and a
/// demo killed outright leaving no VMM behind.
@Suite struct FirstHourTests {
    /// `vmscope demo` (with `options`) in a tmux pane of that size; the shell prints its exit status after it.
    static func demoPane(_ options: String = "", width: Int = 80, height: Int = 24) throws -> TmuxPane {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        return try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo \(options); echo VMSCOPE-EXIT=$?; sleep 60", width: width, height: height)
    }

    @Test func versionAndHelpSayWhatAUserTypes() throws {
        let v = try Binary.run(["--version"])
        #expect(v.status == 0 && v.stdout.hasPrefix("vmscope 0."), "\(v.stdout)\(v.stderr)")
        let help = try Binary.run(["vmm", "--help"])
        #expect(help.stdout.contains("(default: 256M)"), "\(help.stdout)")
        #expect(!help.stdout.contains("ByteSize("), "\(help.stdout)")
    }

    @Test func recordRefusesAnExistingFileWithoutForce() throws {
        let path = NSTemporaryDirectory() + "vmscope-existing-\(getpid()).jsonl.gz"
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let r = try Binary.run(["record", "/nonexistent.sock", "-o", path, "--duration", "1s"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("exists") && r.stderr.contains("--force"), "\(r.stderr)")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me", "the file was touched")
        // With --force it gets past that check (and then fails on the socket, leaving the file for the recorder).
        let forced = try Binary.run(["record", "/nonexistent.sock", "-o", path, "--force", "--duration", "1s"])
        #expect(!forced.stderr.contains("--force to replace it"), "\(forced.stderr)")
    }

    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func aSIGKILLedDemoTakesItsVMMWithIt() throws {
        let t = try Self.demoPane(width: 120, height: 40)
        defer { t.kill() }
        let screen = t.waitFor(20) { (number(after: "faults", in: $0) ?? 0) > 0 }
        try #require((number(after: "faults", in: screen) ?? 0) > 0, "\(screen)")
        let demo = try #require(t.pid.flatMap { childPid(of: $0) }, "the demo's pid")
        let vmm = try #require(childPid(of: demo), "the demo's VMM")
        kill(demo, SIGKILL)
        #expect(eventuallyTrue(5) { kill(vmm, 0) != 0 }, "the VMM \(vmm) outlived its SIGKILLed demo")
    }
}

extension FirstHourTests {
    /// Help at 80×24 (issue 27, item 3): it used to end at `/` and close on any key, so `:`, `x`, `S`, `R` and `q`
    /// could not be found. It scrolls to its end, and only q/Esc/Enter/? close it. Each key is waited for on
    /// screen before the next: CI failed it once under load, and a burst of j sent faster than the inspector
    /// draws can scroll past the line looked for.
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func helpAt80x24ScrollsToItsEndAndClosesOnlyWhenAsked() throws {
        let t = try Self.demoPane()
        defer { t.kill() }
        // At 80 columns the views are tabs (four 38-column panes cut words): the map at full width, then 2 for
        // the faults with their column headers.
        var screen = t.waitFor(60) { $0.contains("[1 GFN map]") && $0.contains("█ private ░ shared") }
        #expect(screen.contains("[1 GFN map]") && !screen.contains("┌─ 2 Faults"), "\(screen)")
        t.keys("2")
        screen = t.waitFor(10) { $0.contains("[2 Faults]") && $0.contains("seq") }
        #expect(screen.contains("┌─ 2 Faults") && !screen.contains("┌─ 1 GFN map"), "\(screen)")
        t.keys("?")
        screen = t.waitFor(10) { $0.contains("Keys and terms 1-") }
        #expect(screen.contains("Keys and terms 1-") && screen.contains("q closes"), "the help says it scrolls:\n\(screen)")
        /// The help's first line shown, from its title ("Keys and terms 12-31 of 64").
        func first(_ s: String) -> Int? {
            s.range(of: #"(?<=Keys and terms )\d+"#, options: .regularExpression).flatMap { Int(s[$0]) }
        }
        /// Presses `key` and waits until the help's first line is no longer `from` (or `seconds` pass).
        func scroll(_ key: String, from: Int?, _ seconds: Double = 10) -> String {
            t.keys(key)
            return t.waitFor(seconds) { first($0) != from }
        }
        // x means nothing to the help: it stays open, and the j after it still scrolls it.
        t.keys("x")
        screen = scroll("j", from: 1)
        #expect(first(screen) == 2, "x closed the help, or j did not scroll it:\n\(screen)")
        // Down to the last key (q quits), one line at a time, and on to the terms at the end.
        for _ in 0..<80 where !screen.contains("q       quit") { screen = scroll("j", from: first(screen)) }
        #expect(screen.contains("q       quit"), "the line for q is reachable:\n\(screen)")
        screen = scroll("G", from: first(screen))
        #expect(screen.contains("tracepoints"), "the terms at the end are reachable:\n\(screen)")
        // At the end, k moves at once (G used to leave a page of dead k presses).
        let end = first(screen)
        screen = scroll("k", from: end)
        #expect(first(screen).map { $0 + 1 } == end, "k after G:\n\(screen)")
        screen = scroll("PageUp", from: first(screen))
        t.keys("q")
        screen = t.waitFor(10) { !$0.contains("Keys ") }
        #expect(!screen.contains("Keys "), "q closes the help:\n\(screen)")
        #expect(!screen.contains("VMSCOPE-EXIT"), "q closed the help, not the inspector")
        t.keys("q")
        screen = t.waitFor(10) { $0.contains("VMSCOPE-EXIT=") }
        #expect(screen.contains("VMSCOPE-EXIT=0"))
    }
}

extension FirstHourTests {
    /// The demo's story (issue 27, item 8): at 80×24, a range converted to shared is converted back within a second
    /// as the guest touches it, and one line on screen now says so (nothing did).
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func theDemoSaysWhatFollowedAConversion() throws {
        let t = try Self.demoPane()
        defer { t.kill() }
        _ = t.waitFor(20) { (number(after: "faults", in: $0) ?? 0) > 0 || $0.contains("█ private") }
        t.keys(":convert 0x100000 1M shared", "Enter")
        _ = t.waitFor(5) { $0.contains("Confirm") || $0.contains("y/N") }
        t.keys("y")
        let screen = t.waitFor(15) { $0.contains("converted back to private (policy convert)") }
        let text = screen.replacingOccurrences(of: "\n", with: " ")
        #expect(text.contains("256 pages at 0x100000 now shared →"), "\(screen)")
        #expect(text.contains("memory faults") && text.contains("converted back to private (policy convert)"), "\(screen)")
        // The terms on that line are explained in the help, after the keys.
        t.keys("?", "G")
        let help = t.waitFor(5) { $0.contains("tracepoints") }
        #expect(help.contains("map glyphs") && help.contains("selected"), "\(help)")
        t.keys("q", "q")
        #expect(t.waitFor(5) { $0.contains("VMSCOPE-EXIT=") }.contains("VMSCOPE-EXIT=0"))
    }

    /// `demo --story`: the guided tour runs its five steps to the end (four times faster here), converting, stopping
    /// a vCPU under policy pause and resuming it, each step said on screen.
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func theGuidedTourRunsToItsEnd() throws {
        let t = try Self.demoPane("--story --story-speed 4")
        defer { t.kill() }
        var seen: Set<String> = []
        var stopped = false
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && !seen.contains("Tour 5/5") {
            let s = t.capture()
            for i in 1...5 where s.contains("Tour \(i)/5") { seen.insert("Tour \(i)/5") }
            if s.replacingOccurrences(of: "\n", with: " ").contains("stopped on the fault (policy pause)") { stopped = true }
            Thread.sleep(forTimeInterval: 0.2)
        }
        #expect(seen == Set((1...5).map { "Tour \($0)/5" }), "steps seen: \(seen.sorted())\n\(t.capture())")
        #expect(stopped, "policy pause stopped no vCPU during the tour")
        t.keys("4")
        let vcpus = t.waitFor(5) { $0.contains("[4 vCPUs]") && !$0.contains("fault-stopped") }
        #expect(!vcpus.contains("fault-stopped"), "the tour's end left a vCPU stopped:\n\(vcpus)")
        t.keys("q")
        #expect(t.waitFor(5) { $0.contains("VMSCOPE-EXIT=") }.contains("VMSCOPE-EXIT=0"))
    }
}
