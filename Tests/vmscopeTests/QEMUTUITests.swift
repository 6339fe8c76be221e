@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing
import TestSupport

@Suite(.serialized, .enabled(if: qemuAvailable, "qemu-system-x86_64 is not installed (.ci/run installs qemu-system-x86)"))
struct QEMUTUITests {
    @Test func attachPausesResumesSurvivesAKilledQEMUAndReattaches() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let config = qemuConfigurations[0]
        let qemu = try startQEMU(config.arguments)
        defer { qemu.stop() }
        let checker = try ControlClient(path: qemu.qmpSockets[1])
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(qemu.qmpSockets[0]); echo VMSCOPE-EXIT=$?; sleep 60", width: 200, height: 50)
        var screen = t.waitFor(15) { $0.contains("status running") && $0.contains("pc.ram") && $0.contains("rip 0x") }
        #expect(screen.contains("QEMU 7.") || screen.contains("QEMU "), "\(screen)")
        // No attributes from QEMU: the map is the heat of KVM's traced accesses, QEMU's reason above it.
        #expect(screen.contains("no guest_memfd") && screen.contains("private/shared map unavailable"), "\(screen)")
        if let why = tracingLibrariesMissing {
            // Without libtracefs the pane says why there are no traced rows (issue 27: one line naming the package).
            print("QEMUTUITests: the traced heat map is not checked: \(why)")
            #expect(screen.contains("tracing needs libtracefs"), "\(screen)")
        } else {
            #expect(screen.contains("heat map of KVM's traced accesses") && screen.contains("KVM-mapped RAM"), "\(screen)")
        }
        // The machine and target in the status bar; each vCPU's host thread, as query-cpus-fast names it.
        #expect(screen.contains("pc-i440fx-") && screen.contains("(pc) x86_64 pid \(qemu.process.pid)"), "\(screen)")
        for c in try #require(try checker.execute("query-cpus-fast").arrayValue) {
            let tid = try #require(c["thread-id"]?.intValue)
            #expect(screen.contains("  \(tid)\n") || screen.contains("  \(tid) "), "thread \(tid) in:\n\(screen)")
        }

        // t under NO_COLOR (which the test runner sets): the theme's name, and that it shows no colours.
        t.keys("t")
        screen = t.waitFor(10) { $0.contains("attributes only") }
        #expect(screen.contains("theme high-contrast: attributes only, no colours (NO_COLOR is set)"), "\(screen)")

        // P on the vCPU view asks first (vmscope did not start this QEMU) and, on y, stops the VM; QEMU's own
        // query-status agrees.
        t.keys("4", "P")
        screen = t.waitFor(5) { $0.contains("did not start? y/N") }
        #expect(screen.contains("Pause vCPU 0 of") && screen.contains("did not start? y/N"), "\(screen)")
        #expect(try checker.execute("query-status")["status"]?.stringValue == "running", "nothing before the answer")
        t.keys("y")
        screen = t.waitFor(5) { $0.contains("status paused") }
        #expect(screen.contains("stop the VM") && screen.contains("done"), "\(screen)")
        #expect(try checker.execute("query-status")["status"]?.stringValue == "paused")
        // Paused, the memory map holds still (the firmware rearranges it while it boots), and within one of the
        // inspector's memory polls the memslot view lists exactly the KVM ranges info mtree -f shows (end
        // exclusive on screen).
        let ranges = try Independent.kvmRangeBounds(try hmp(checker, "info mtree -f"))
        #expect(ranges.count >= 2)
        let shownRanges = ranges.map { String(format: "0x%08llx-0x%08llx", $0.start, $0.end + 1) } + ["(\(ranges.count), by"]
        screen = t.waitFor(15) { s in shownRanges.allSatisfy { s.contains($0) } }
        for shown in shownRanges { #expect(screen.contains(shown), "\(shown) in:\n\(screen)") }
        // Paused, the registers shown for each vCPU (j moves to the next) are those info registers prints.
        let registers = try hmp(checker, "info registers -a")
        for index in 0..<config.vcpus {
            if index > 0 { t.keys("j") }
            var wanted = ["vCPU \(index) registers"]
            for (printed, ours) in [("EIP", "rip"), ("EAX", "rax"), ("ESP", "rsp"), ("EFL", "rflags"), ("CR0", "cr0")] {
                let value = try #require(try Independent.register(printed, registers)[index], "\(printed) of CPU#\(index)")
                wanted.append(String(format: "%@ 0x%08llx", ours, value))
            }
            screen = t.waitFor(10) { s in wanted.allSatisfy { s.contains($0) } }
            for w in wanted { #expect(screen.contains(w), "\(w) in:\n\(screen)") }
        }
        // x in the memslot view dumps where the selected range starts (G: the last, the BIOS ROM), read with
        // QEMU's xp; the first 16 bytes are those xp prints to the checker.
        let last = try #require(ranges.last)
        let xp = Independent.normalized(try hmp(checker, String(format: "xp /16xb 0x%llx", last.start)))
        let bytes = xp.split(separator: "\n").flatMap { $0.split(separator: " ").dropFirst().map { String($0.dropFirst(2)) } }
        #expect(bytes.count == 16, "\(xp)")
        t.keys("3", "G", "x")
        let dumpLine = String(format: "0x%08llx  ", last.start) + bytes.joined(separator: " ")
        screen = t.waitFor(5) { $0.contains(dumpLine) }
        #expect(screen.contains(String(format: "read-memory 0x%08llx", last.start)) && screen.contains(dumpLine), "\(dumpLine) in:\n\(screen)")
        // The dump scrolls over the whole page read (it showed 256 bytes, and any key closed it).
        t.keys("G")
        let lastRow = String(format: "0x%08llx  ", last.start + 0xff0)
        screen = t.waitFor(5) { $0.contains(lastRow) }
        #expect(screen.contains(lastRow) && screen.contains("of 4096"), "\(lastRow) in:\n\(screen)")
        t.keys("Escape", "4")
        t.keys("P")
        _ = t.waitFor(5) { $0.contains("did not start? y/N") }
        t.keys("y")
        screen = t.waitFor(5) { $0.contains("status running") }
        #expect(try checker.execute("query-status")["status"]?.stringValue == "running")

        // NMI through QEMU's inject-nmi; a conversion is refused with QEMU's reason and changes nothing.
        t.keys("i", "n")
        _ = t.waitFor(5) { $0.contains("did not start? y/N") }
        t.keys("y")
        screen = t.waitFor(10) { $0.contains("inject an NMI") }
        #expect(screen.contains("inject an NMI (QEMU's inject-nmi: every vCPU): done"), "\(screen)")
        t.keys("1", "s", "y")
        screen = t.waitFor(10) { $0.contains("refused") }
        #expect(screen.contains("refused: QEMU") && screen.contains("no QMP command for private/shared conversion"), "\(screen)")
        // R records it (issue 27, item 14: it was refused): from the inspector's own model, as the monitor is held
        // here; R again finishes the file, which replays to QEMU's views.
        t.keys("R")
        screen = t.waitFor(5) { $0.contains("recording to ") }
        let file = try #require(screen.firstMatch(of: /recording to (\S+\.jsonl\.gz)/).map { String($0.1) }, "\(screen)")
        defer { unlink(file) }
        Thread.sleep(forTimeInterval: 2.5)
        t.keys("R")
        screen = t.waitFor(5) { $0.contains("recording finished") }
        #expect(screen.contains("recording finished (stopped)"), "\(screen)")
        let replayed = try Binary.run(["replay", file, "--dump-at", "end", "--json"])
        #expect(replayed.status == 0, "\(replayed.stderr)")
        #expect(try parseJSON(replayed.stdout)["vm"]?["qemu-version"]?.stringValue?.hasPrefix("QEMU") == true, "\(replayed.stdout.prefix(500))")

        // QEMU dies: the inspector says so and keeps running; a new QEMU on the same path is picked up.
        checker.close()
        qemu.kill()
        screen = t.waitFor(10) { $0.contains("disconnected") }
        #expect(screen.contains("disconnected"), "\(screen)")
        #expect(!screen.contains("VMSCOPE-EXIT"), "the inspector is still running")
        let again = try startQEMU(config.arguments, directory: qemu.directory)
        defer { again.stop() }
        screen = t.waitFor(15) { $0.contains("status running") && !$0.contains("disconnected") && $0.contains("pc.ram") }
        #expect(screen.contains("connected (QEMU") && screen.contains("status running"), "\(screen)")
        let restarted = "QEMU restarted (pid \(qemu.process.pid) → \(again.process.pid))"
        screen = t.waitFor(10) { $0.contains(restarted) }
        #expect(screen.contains(restarted) && screen.contains("pid \(again.process.pid)"), "\(screen)")
        // The new QEMU is traced in turn: its faults pane and heat map again, not QEMU's reasons for their absence.
        t.keys("1")
        if tracingLibrariesMissing == nil {
            screen = t.waitFor(10) { $0.contains("heat map of KVM's traced accesses") && !$0.contains("fault stream unavailable") }
            #expect(screen.contains("heat map of KVM's traced accesses") && !screen.contains("fault stream unavailable"), "\(screen)")
        }

        t.keys("q")
        #expect(t.waitFor(10) { $0.contains("VMSCOPE-EXIT=") }.contains("VMSCOPE-EXIT=0"))
    }

    @Test func aMonitorAnotherClientHoldsIsExplainedAndFreedAgain() throws {
        let qemu = try startQEMU(qemuConfigurations[0].arguments, monitors: 1)
        defer { qemu.stop() }
        // Another client (libvirt, say) holds QEMU's only monitor: QEMU accepts the connection and says nothing.
        let holder = try ControlClient(path: qemu.qmpSockets[0])
        for args in [["attach", qemu.qmpSockets[0]], ["snapshot", qemu.qmpSockets[0], "--json"]] {
            let r = try Binary.run(args)
            #expect(r.status == 2, "\(args[0]): \(r.status) \(r.stderr)")
            #expect(r.stderr.contains("no QMP greeting") && r.stderr.contains("one client at a time") && r.stderr.contains("another -qmp"),
                    "\(args[0]): \(r.stderr)")
            #expect(r.stdout.isEmpty, "\(args[0]) wrote nothing: \(r.stdout.prefix(200))")
        }
        // Freed, the same monitor serves vmscope.
        holder.close()
        let r = try Binary.run(["snapshot", qemu.qmpSockets[0], "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("\"peer\": \"QEMU 7.") || r.stdout.contains("\"peer\":\"QEMU "), "\(r.stdout.prefix(300))")
    }

    /// t cycles the colour theme: the terminal's colours change, not just the name.
    @Test func aThemeChangesTheTerminalsColours() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let qemu = try startQEMU(qemuConfigurations[0].arguments + ["-S"], monitors: 1)
        defer { qemu.stop() }
        // The test runner sets NO_COLOR; a user's terminal usually does not.
        let t = try TmuxPane("env -u NO_COLOR LANG=C.UTF-8 \(Binary.url.path) attach \(qemu.qmpSockets[0]); sleep 60", width: 160, height: 48)
        _ = t.waitFor(15) { $0.contains("status prelaunch") && $0.contains("rip 0x") }
        func styles() -> Set<String> {
            var out = Set<String>()
            var rest = Substring(t.captureStyled())
            while let start = rest.range(of: "\u{1b}[") {
                let tail = rest[start.upperBound...]
                guard let end = tail.firstIndex(of: "m") else { break }
                out.insert(String(tail[..<end]))
                rest = tail[tail.index(after: end)...]
            }
            return out
        }
        let before = styles()
        #expect(before.contains { $0.contains("38;5;") }, "the default theme's 256 colours: \(before.sorted())")
        t.keys("t")
        let screen = t.waitFor(10) { $0.contains("theme high-contrast") }
        #expect(!screen.contains("attributes only"), "\(screen)")
        let after = styles()
        #expect(before != after && !after.contains { $0.contains("38;5;60") }, "colours \(before.sorted()) → \(after.sorted())")
        t.keys("q")
    }
}
