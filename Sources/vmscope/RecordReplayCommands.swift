import ArgumentParser
import ControlProtocol
import Foundation
import Inspector
import Synchronization

/// The longest duration the command line takes (a year): `1e11` or `1e300` seconds are refused by name instead of
/// overflowing when turned into nanoseconds.
let maxDurationSeconds: Double = 365 * 24 * 3600

/// "30", "30s", "2m", "1h", "1.5s", "250ms" as nanoseconds; nil when it is not a duration from 0 to a year.
func parseDuration(_ text: String) -> UInt64? {
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
    var number = Substring(text), scale = 1.0
    if let (suffix, s) = units.first(where: { text.hasSuffix($0.0) }) { number = text.dropLast(suffix.count); scale = s }
    guard let v = Double(number), v.isFinite, v >= 0, v * scale <= maxDurationSeconds else { return nil }
    return UInt64((v * scale * 1e9).rounded())
}

private let recordStop = Atomic<Int32>(0)

/// `vmscope record SOCKET -o FILE`: the session to a file, beside any inspector.
struct RecordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Record a VMM's session (snapshot, every event, state polls) to a gzip JSON-lines file.",
        discussion: """
            Ctrl-C (or SIGTERM) finishes the file cleanly. A recorder killed outright leaves a file that replays \
            up to its last flush (at most 100 ms before). A stock QEMU is recorded from what the inspector sees \
            of it: its views once a second and, as root, KVM's traced rows (format version 2). The format is in \
            docs/recording.md. Exit status 0 \
            when the file was finished, 2 when it could not be started or written.
            """)

    @Argument(help: "The control socket: vmscope's VMM, or a stock QEMU's QMP socket (recorded from what the inspector sees of it).") var socket: String
    @Option(name: .shortAndLong, help: "The file to write (conventionally .jsonl.gz).") var output: String
    @Option(help: "Stop after this long, e.g. 30s, 5m (default: until Ctrl-C).") var duration: String?
    @Option(help: "How many of the newest fault records the opening snapshot holds.") var faults = 256
    @Flag(help: "Replace --output if it exists (without it an existing file is refused, never overwritten).") var force = false

    func validate() throws {
        if !force, FileManager.default.fileExists(atPath: output) {
            throw ValidationError("--output \(output) exists: give another file, or --force to replace it")
        }
        if let duration, parseDuration(duration) == nil {
            throw ValidationError("--duration '\(duration)' is not a duration from 0 to a year (e.g. 30, 30s, 5m, 1h)")
        }
        guard (0...1_000_000).contains(faults) else { throw ValidationError("--faults must be 0 to 1000000") }
    }

    func run() throws {
        var err = StandardError()
        for sig in [SIGINT, SIGTERM, SIGHUP] { signal(sig) { s in recordStop.store(s, ordering: .relaxed) } }
        // A stock QEMU has no query-snapshot: record what the inspector would see of it.
        if let probe = try? ControlClient(path: socket, timeoutMs: 5000, decodeFaults: true) {
            if case .qemu = probe.peer { return try recordQEMU(probe) }
            probe.close()
        }
        let recorder: Recorder
        do { recorder = try Recorder(socket: socket, path: output, faultLimit: faults, recorder: "vmscope record") } catch {
            print("vmscope record: \(error)", to: &err)
            throw ExitCode(2)
        }
        let deadline = duration.flatMap(parseDuration).map { HostClock.monotonicNs() + $0 }
        print("vmscope record: recording \(socket) to \(output)\(duration.map { " for \($0)" } ?? "; Ctrl-C finishes the file")",
              to: &err)
        do {
            let reason = try recorder.run(until: deadline) { recordStop.load(ordering: .relaxed) != 0 }
            print("vmscope record: finished (\(reason)): \(recorder.writer.entries) entries, \(recorder.writer.bytesWritten) bytes in \(output)",
                  to: &err)
        } catch {
            print("vmscope record: \(error); \(output) replays up to the last flush", to: &err)
            throw ExitCode(2)
        }
    }
}

extension RecordCommand {
    /// A stock QEMU: its monitor polled and its process traced as `attach` does (tracing needs root; without it the
    /// views alone), the model recorded (`ModelRecorder`, format version 2).
    func recordQEMU(_ client: ControlClient) throws {
        var err = StandardError()
        let source = TracedSocketSource(socket: SocketSource(path: socket, client: client))
        defer { source.close() }
        let driver = InspectorDriver(source: source, ui: InspectorUI(themeNames: ["default"], ascii: true, readOnly: true))
        // The first poll connects and reads QEMU's state; the recording starts from it.
        _ = driver.tick(nowNs: HostClock.monotonicNs(), width: 160, height: 48)
        let recorder: ModelRecorder
        do {
            recorder = try ModelRecorder(path: output, socket: socket, greeting: client.greeting, recorder: "vmscope record",
                                         model: driver.model)
        } catch {
            print("vmscope record: \(error)", to: &err)
            throw ExitCode(2)
        }
        let deadline = duration.flatMap(parseDuration).map { HostClock.monotonicNs() + $0 }
        let traced = source.trace != nil ? "its KVM exits traced" : "not traced (\(driver.model.unavailable[.faults] ?? "tracing needs root"))"
        print("vmscope record: recording stock QEMU \(socket) to \(output) (its views, \(traced))"
              + (duration.map { " for \($0)" } ?? "; Ctrl-C finishes the file"), to: &err)
        var reason = "stopped", peerGone = false
        do {
            while recordStop.load(ordering: .relaxed) == 0 {
                let now = HostClock.monotonicNs()
                if let deadline, now >= deadline { reason = "duration reached"; break }
                _ = driver.tick(nowNs: now, width: 160, height: 48)
                try recorder.observe(driver.model, nowNs: now)
                if case .disconnected(let why) = driver.model.connection { reason = "QEMU went away: \(why)"; peerGone = true; break }
                usleep(100_000)
            }
            try recorder.finish(reason: reason, peerGone: peerGone)
            print("vmscope record: finished (\(reason)): \(recorder.writer.entries) entries, \(recorder.writer.bytesWritten) bytes in \(output)",
                  to: &err)
        } catch {
            print("vmscope record: \(error); \(output) replays up to the last flush", to: &err)
            throw ExitCode(2)
        }
    }
}

/// `vmscope replay FILE`: the inspector driven by a recording.
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay a recording in the inspector (same views and keys; mutations disabled), or print the views at a time.",
        discussion: """
            Keys beside the inspector's: Space pause/play, [ and ] 10 s back/forward, { and } previous/next \
            fault burst. With --dump-at T no terminal is used: the views at T seconds into the recording are \
            printed as a snapshot (--json, the default, or --text). A truncated or damaged recording replays up \
            to the damage, and says where it stopped.
            """)

    @Argument(help: "The recording.") var file: String
    @Option(help: "Playback speed (0.1 to 100).") var speed: Double = 1
    @Option(help: "Print the views at this many seconds into the recording (or 'end') instead of opening the TUI.")
    var dumpAt: String?
    @Flag var format: SnapshotFormat = .json
    @Option(help: "With --dump-at: how many of the newest fault records to include.") var faults = 256
    @Option(name: .shortAndLong, help: "With --dump-at: write to this file instead of standard output.") var output: String?
    @OptionGroup var options: InspectorOptions

    func validate() throws {
        guard speed >= 0.1 && speed <= 100 else { throw ValidationError("--speed must be between 0.1 and 100") }
        if let dumpAt, dumpAt != "end", parseDuration(dumpAt) == nil {
            throw ValidationError("--dump-at '\(dumpAt)' is not a time into the recording (seconds up to a year, e.g. 12.5, or 'end')")
        }
        guard (0...1_000_000).contains(faults) else { throw ValidationError("--faults must be 0 to 1000000") }
    }

    func run() throws {
        var err = StandardError()
        let recording: Recording
        do { recording = try Recording.read(path: file) } catch {
            print("vmscope replay: \(file): \(error)", to: &err)
            throw ExitCode(2)
        }
        if let damage = recording.damage { print("vmscope replay: \(file): \(damage)", to: &err) }
        var replay = Replay(recording, file: file)
        if let dumpAt {
            let wanted = dumpAt == "end" ? recording.durationNs : parseDuration(dumpAt)!
            if wanted > recording.durationNs {
                print("vmscope replay: \(file) holds \(Fmt.duration(recording.durationNs)); showing its end, not \(Fmt.duration(wanted))", to: &err)
            }
            replay.seek(to: wanted)
            let text = switch format {
            case .json:
                Snapshot.json(replay.model, faultLimit: faults,
                              takenAtWallNs: replay.wallNs(at: replay.positionNs),
                              origin: .recording(file: file, offsetNs: replay.positionNs)).pretty() + "\n"
            case .text: Snapshot.text(replay.model, ascii: options.ascii, nowNs: replay.monotonicNs(at: replay.positionNs))
            }
            try writeOutput(text, to: output, command: "replay")
            return
        }
        let (themes, order, problems) = options.loadThemes()
        for p in problems { print("vmscope: \(p); using \(order[0])", to: &err) }
        let source = RecordingSource(replay: replay, speed: speed, nowNs: HostClock.monotonicNs())
        let session = InspectorSession(source: source, themes: themes, themeOrder: order, ascii: options.useASCII, readOnly: true, background: false)
        if let damage = recording.damage { session.ui.status = (damage, true) }
        let terminal = Terminal(theme: themes[order[0]] ?? .mono)
        session.run(terminal: terminal)
        session.close(terminal)
        let signal = Terminal.interrupted.load(ordering: .relaxed)
        if signal != 0 { throw ExitCode(128 + signal) }
    }
}
