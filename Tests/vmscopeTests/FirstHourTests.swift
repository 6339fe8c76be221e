import Foundation
import ProcessSupport
import Testing

/// A new user's first hour (issue 27): what the command line says of itself, refusing to overwrite a file, and a
/// demo killed outright leaving no VMM behind.
@Suite struct FirstHourTests {
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
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo; echo VMSCOPE-EXIT=$?; sleep 60", width: 120, height: 40)
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
    /// could not be found. It scrolls to its end, and only q/Esc/Enter/? close it.
    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func helpAt80x24ScrollsToItsEndAndClosesOnlyWhenAsked() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) demo; echo VMSCOPE-EXIT=$?; sleep 60", width: 80, height: 24)
        defer { t.kill() }
        // At 80 columns the views are tabs (four 38-column panes cut words): the map at full width, then 2 for
        // the faults with their column headers.
        var screen = t.waitFor(20) { $0.contains("[1 GFN map]") && $0.contains("█ private ░ shared") }
        #expect(screen.contains("[1 GFN map]") && !screen.contains("┌─ 2 Faults"), "\(screen)")
        t.keys("2")
        screen = t.waitFor(5) { $0.contains("[2 Faults]") && $0.contains("seq") }
        #expect(screen.contains("┌─ 2 Faults") && !screen.contains("┌─ 1 GFN map"), "\(screen)")
        t.keys("?")
        screen = t.waitFor(3) { $0.contains("Keys 1-") }
        #expect(screen.contains("Keys 1-") && screen.contains("q closes"), "the help says it scrolls:\n\(screen)")
        t.keys("x")   // a key the help does not use: it stays open
        Thread.sleep(forTimeInterval: 0.5)
        #expect(t.capture().contains("Keys 1-"), "x closed the help")
        t.keys("G")
        screen = t.waitFor(3) { $0.contains("quit") }
        #expect(screen.contains("quit"), "the last lines (q quits) are reachable:\n\(screen)")
        t.keys("k", "k", "PageUp")
        t.keys("q")
        screen = t.waitFor(3) { !$0.contains("Keys ") }
        #expect(!screen.contains("Keys "), "q closes the help:\n\(screen)")
        #expect(!screen.contains("VMSCOPE-EXIT"), "q closed the help, not the inspector")
        t.keys("q")
        screen = t.waitFor(5) { $0.contains("VMSCOPE-EXIT=") }
        #expect(screen.contains("VMSCOPE-EXIT=0"))
    }
}
