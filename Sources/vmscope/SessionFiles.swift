import ControlProtocol
import Foundation
import Inspector
import Synchronization

/// Where `S` and `R` put their files: $VMSCOPE_DIR, else the current directory.
func sessionFilePath(_ kind: String, _ ext: String) -> String {
    let dir = ProcessInfo.processInfo.environment["VMSCOPE_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        ?? FileManager.default.currentDirectoryPath
    var t = time(nil)
    var tm = tm()
    localtime_r(&t, &tm)
    var buf = [CChar](repeating: 0, count: 32)
    strftime(&buf, buf.count, "%Y%m%d-%H%M%S", &tm)
    let stamp = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    var path = "\(dir)/vmscope-\(kind)-\(stamp).\(ext)"
    var n = 1
    while FileManager.default.fileExists(atPath: path) {
        n += 1
        path = "\(dir)/vmscope-\(kind)-\(stamp)-\(n).\(ext)"
    }
    return path
}

/// `S`: the views as JSON and as text, side by side; the status line says where (or why not).
func writeSnapshotFiles(_ model: InspectorModel, origin: Snapshot.Origin, ascii: Bool) -> (text: String, isError: Bool) {
    let json = sessionFilePath("snapshot", "json")
    let txt = String(json.dropLast(5)) + ".txt"
    do {
        try Data((Snapshot.json(model, takenAtWallNs: HostClock.wallNs(), origin: origin).pretty() + "\n").utf8)
            .write(to: URL(fileURLWithPath: json), options: .atomic)
        try Data(Snapshot.text(model, ascii: ascii).utf8).write(to: URL(fileURLWithPath: txt), options: .atomic)
    } catch {
        return ("snapshot not written: \(error.localizedDescription)", true)
    }
    return ("snapshot written: \(json) (and .txt)", false)
}

/// `R`'s recording, on a thread of its own: whichever recorder it runs, its outcome once it ended, and `stop`,
/// which waits for the file to be finished.
class SessionRecording: @unchecked Sendable {
    // @unchecked: the flags are atomic or locked; subclasses hand their recorder to the thread and no longer use it.
    let path: String
    let startedNs = HostClock.monotonicNs()
    private let stopFlag = Atomic<Bool>(false)
    private let outcome = Mutex<String?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(path: String) { self.path = path }

    /// Runs `body` on the thread; it records until `stopped()` says so, and returns what the status line says.
    func start(_ name: String, _ body: @escaping @Sendable (_ stopped: @Sendable () -> Bool) -> String) {
        let thread = Thread { [self] in
            let result = body { self.stopFlag.load(ordering: .relaxed) }
            outcome.withLock { $0 = result }
            done.signal()
        }
        thread.name = name
        thread.start()
    }

    static func finished(_ reason: String, _ writer: RecordingWriter) -> String {
        "recording finished (\(reason)): \(writer.path), \(writer.entries) entries, \(writer.bytesWritten >> 10) KiB"
    }

    static func failed(_ error: Error, _ path: String) -> String { "recording failed: \(error); \(path) replays up to its last flush" }

    /// Set when the recording has ended (stopped, or on its own: the VM went away, the disk filled).
    var finished: String? { outcome.withLock { $0 } }

    /// Stops it and waits for the file to be finished.
    func stop() -> String {
        stopFlag.store(true, ordering: .relaxed)
        done.wait()
        done.signal()
        return finished ?? "recording finished: \(path)"
    }
}

/// `R` on vmscope's VMM: a Recorder with its own connection to the socket.
final class BackgroundRecording: SessionRecording, @unchecked Sendable {
    init(socket: String, path: String) throws {
        let recorder = try Recorder(socket: socket, path: path, recorder: "vmscope attach (R)")
        super.init(path: path)
        start("vmscope-recorder") { stopped in
            do { return Self.finished(try recorder.run { stopped() }, recorder.writer) } catch { return Self.failed(error, path) }
        }
    }
}

/// `R` on a stock QEMU: `ModelRecorder`, given the newest model by the UI loop (`offer`, a copy that costs nothing
/// until the model changes), ten times a second at most.
final class BackgroundModelRecording: SessionRecording, @unchecked Sendable {
    private let latest = Mutex<InspectorModel?>(nil)

    init(path: String, socket: String, greeting: JSON, model: InspectorModel, recorder name: String) throws {
        let recorder = try ModelRecorder(path: path, socket: socket, greeting: greeting, recorder: name, model: model)
        super.init(path: path)
        start("vmscope-model-recorder") { [self] stopped in
            var reason = "stopped", peerGone = false
            do {
                while !stopped() {
                    usleep(100_000)
                    guard let m = self.latest.withLock({ m -> InspectorModel? in defer { m = nil }; return m }) else { continue }
                    try recorder.observe(m, nowNs: HostClock.monotonicNs())
                    if case .disconnected(let why) = m.connection { reason = "QEMU went away: \(why)"; peerGone = true; break }
                }
                try recorder.finish(reason: reason, peerGone: peerGone)
                return Self.finished(reason, recorder.writer)
            } catch {
                return Self.failed(error, path)
            }
        }
    }

    func offer(_ m: InspectorModel) { latest.withLock { $0 = m } }
}
