import ControlProtocol
import Foundation
import ProcessSupport
import Testing

/// vmscope's clients against a server that misbehaves (issue 19): each ends with a clear error or shows what
/// it got, never traps or is killed by a signal, and stays within its memory bound (docs/reliability.md:
/// one message of 16 MiB being framed, 64 MiB of queued events; 256 MiB in all, the binary and heap included).
@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct HostileServerTests {
    static let rssBound: UInt64 = 256 << 20

    /// A live VMM, and in turn each cue's server in front of it.
    func eachServer(_ body: (String, HostileServer.Cue, HostileServer) throws -> Void) throws {
        let dir = NSTemporaryDirectory() + "vmscope-hs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vmm = try startVMM(dir + "/vm.sock", log: dir + "/vmm.log")
        defer { _ = vmm.terminate() }
        for cue in HostileServer.Cue.allCases {
            let server = try HostileServer(cue: cue, path: dir + "/\(cue).sock", upstream: dir + "/vm.sock")
            defer { server.stop() }
            try body(dir, cue, server)
        }
    }

    /// Runs `args` against each cue's server; `check` sees the cue, exit status and stderr.
    func eachCue(_ name: String, _ args: (String, String) -> [String], seconds: Double = 20,
                 check: (HostileServer.Cue, Int32, String, String) throws -> Void) throws {
        try eachServer { dir, cue, server in
            let out = dir + "/\(name)-\(cue)"
            let child = try ChildProcess([Binary.url.path] + args(server.path, out),
                                         redirects: .init(stdin: "/dev/null", stdout: out + ".stdout", stderr: out + ".stderr"))
            let rss = PeakRSS(pid: child.pid)
            var status = child.wait(seconds: seconds)
            let peak = rss.stop()
            if status == nil { status = child.terminate() }  // still running: the tool's own choice (ctl --events)
            let stderr = (try? String(contentsOfFile: out + ".stderr", encoding: .utf8)) ?? ""
            print("\(name) against \(cue): exit \(status!), peak RSS \(peak >> 20) MiB, stderr: \(stderr.prefix(200))")
            #expect(status! < 128 || status! == 128 + SIGTERM, "\(name) against \(cue) was killed by signal \(status! - 128): \(stderr)")
            #expect(!stderr.contains("Fatal error") && !stderr.contains("Illegal instruction"), "\(name) against \(cue): \(stderr)")
            #expect(peak <= Self.rssBound, "\(name) against \(cue): peak RSS \(peak >> 20) MiB")
            try check(cue, status!, stderr, out)
        }
    }

    static let broken: Set<HostileServer.Cue> = [.endlessLine, .garbageAfterGreeting]

    @Test func snapshotSaysWhatWentWrongOrShowsWhatItGot() throws {
        try eachCue("snapshot", { ["snapshot", $0, "-o", $1 + ".json"] }) { cue, status, stderr, out in
            if Self.broken.contains(cue) {
                #expect(status == 2 && stderr.split(separator: "\n").count <= 2 && !stderr.isEmpty, "\(cue): \(stderr)")
                #expect(!FileManager.default.fileExists(atPath: out + ".json"), "\(cue): nothing written")
                #expect(stderr.contains(cue == .endlessLine ? "longer than" : "not JSON"), "\(cue): \(stderr)")
            }
        }
    }

    @Test func ctlSaysWhatWentWrongOrPrintsTheReply() throws {
        try eachCue("ctl", { s, _ in ["ctl", s, "query-vm", "--timeout", "5"] }) { cue, status, stderr, out in
            if Self.broken.contains(cue) { #expect(status == 2 && !stderr.isEmpty, "\(cue): \(stderr)") }
        }
        try eachCue("ctl-events", { s, _ in ["ctl", s, "--events", "--count", "200", "--timeout", "3"] }, seconds: 10) { _, _, _, _ in }
    }

    @Test func recordEndsCleanlyAndWhatItWroteReplays() throws {
        try eachCue("record", { ["record", $0, "-o", $1 + ".jsonl.gz", "--duration", "2s"] }) { cue, status, stderr, out in
            if Self.broken.contains(cue) { #expect(status == 2 && !stderr.isEmpty, "\(cue): \(stderr)") }
            guard FileManager.default.fileExists(atPath: out + ".jsonl.gz") else { return }
            let r = try runProcess(Binary.url.path, ["replay", out + ".jsonl.gz", "--dump-at", "end"])
            #expect(r.status < 128, "replay of \(cue)'s recording: \(r.stderr)")
            #expect(!r.stderr.contains("Fatal error"), "\(cue): \(r.stderr)")
        }
    }

    @Test func attachShowsWhatItGotOrWhyItCannot() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        try eachServer { _, cue, server in
            let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach \(server.path); echo VMSCOPE-EXIT=$?; sleep 60", width: 160, height: 48)
            defer { t.kill() }
            var peak: UInt64 = 0
            var screen = ""
            let until = Date().addingTimeInterval(12)  // a server that never answers costs one 5 s command timeout
            while Date() < until {
                if let pid = t.pid.flatMap(childPid) { peak = max(peak, residentBytes(pid: pid) ?? 0) }
                screen = t.capture()
                if screen.contains("VMSCOPE-EXIT=") { break }
                usleep(50_000)
            }
            print("attach against \(cue): peak RSS \(peak >> 20) MiB\n\(screen.split(separator: "\n").prefix(3).joined(separator: "\n"))")
            #expect(peak <= Self.rssBound, "\(cue): \(peak >> 20) MiB")
            if let exit = screen.split(separator: "\n").first(where: { $0.contains("VMSCOPE-EXIT=") }) {
                // It gave up: with a reason, not a trap.
                #expect(exit.contains("VMSCOPE-EXIT=2") || exit.contains("VMSCOPE-EXIT=0"), "\(cue): \(screen)")
                #expect(!screen.contains("Fatal error"), "\(cue): \(screen)")
            } else {
                // Still up: it says where it is and what it could not take.
                #expect(screen.contains("vmscope"), "\(cue): \(screen)")
                t.keys("q")
                let done = t.waitFor(10) { $0.contains("VMSCOPE-EXIT=") }
                #expect(done.contains("VMSCOPE-EXIT=0"), "\(cue): \(done)")
            }
        }
    }
}
