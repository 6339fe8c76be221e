import Foundation
import ProcessSupport
import Testing

/// Files that inflate or weigh far more than they look (issue 19: a 1 MB gzip bomb took 1 GiB to replay).
struct HostileFileTests {
    @Test func aGzipBombIsReadUpToTheLimitAndSaysSo() throws {
        let bomb = NSTemporaryDirectory() + "vmscope-bomb-\(getpid()).jsonl.gz"
        defer { unlink(bomb) }
        // 1 GiB of zeros, about 1 MB compressed.
        #expect(try runProcess("/bin/sh", ["-c", "head -c 1073741824 /dev/zero | gzip -1 > \(bomb)"]).status == 0)
        let size = (try FileManager.default.attributesOfItem(atPath: bomb)[.size] as? Int) ?? 0
        #expect(size < 8 << 20, "\(size) bytes")
        let child = try ChildProcess([Binary.url.path, "replay", bomb, "--dump-at", "end"],
                                     redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: bomb + ".err"))
        defer { unlink(bomb + ".err") }
        let rss = PeakRSS(pid: child.pid)
        let status = child.wait(seconds: 120)
        let peak = rss.stop()
        let stderr = (try? String(contentsOfFile: bomb + ".err", encoding: .utf8)) ?? ""
        print("replay of a 1 GiB gzip bomb: exit \(status ?? -1), peak RSS \(peak >> 20) MiB: \(stderr)")
        #expect(status == 2 && stderr.contains("inflates past 256 MiB"), "\(stderr)")
        // docs/reliability.md: 256 MiB inflated at most, plus the file read and the parse of what came.
        #expect(peak < 400 << 20, "\(peak >> 20) MiB")
    }

    /// Issue 28, class 2: a recording whose times sit near the top of their range (each entry's `t` within 10 s of
    /// 2^64, the header's start times at 2^64 − 1, the records' `time-ns` too). `replay --dump-at` (JSON: the
    /// snapshot's wall time is the start plus the position) and the replay TUI's `]` and `}` trapped (exit 132); now
    /// every form shows it, the positions stopping at the recording's end.
    @Test func aRecordingWithTimesNearTheTopOfTheirRangeReplays() throws {
        let seed = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../FuzzTargetsTests/Corpus/recording/regression-times-near-2-64.jsonl").standardized.path
        let dir = NSTemporaryDirectory() + "vmscope-near-2-64-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/near-2-64.jsonl.gz"
        #expect(try runProcess("/bin/sh", ["-c", "gzip -c < \(seed) > \(file)"]).status == 0)
        for at in ["0", "1s", "end", "1e6"] {
            for format in ["--json", "--text"] {
                let r = try runProcess(Binary.url.path, ["replay", file, "--dump-at", at, format])
                #expect(r.status == 0 && !r.stdout.isEmpty, "--dump-at \(at) \(format): exit \(r.status): \(r.stderr.suffix(300))")
            }
        }
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let tui = try TmuxPane("cd \(dir) && LANG=C.UTF-8 VMSCOPE_DIR=\(dir) \(Binary.url.path) replay \(file); echo REPLAY-EXIT=$?; sleep 60")
        defer { tui.kill() }
        var screen = tui.waitFor(10) { $0.contains("REPLAY ▶") }
        #expect(screen.contains("REPLAY ▶"), "\(screen)")
        for key in ["]", "]", "[", "}", "{", "Space", "]", "Space", "S", "]", "}", "[", "["] {
            tui.keys(key)
            usleep(200_000)
        }
        screen = tui.waitFor(10) { $0.contains("REPLAY ‖") && (timelinePosition($0) ?? 0) > 1e10 }
        #expect((timelinePosition(screen) ?? 0) > 1e10, "`}` went to the burst near 2^64 ns: \(screen)")
        tui.keys("q")
        screen = tui.waitFor(10) { $0.contains("REPLAY-EXIT=") }
        #expect(screen.contains("REPLAY-EXIT=0"), "\(screen)")
    }
}
