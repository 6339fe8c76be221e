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

/// `R` in the inspector: a Recorder on a thread of its own, with its own connection to the socket.
final class BackgroundRecording: Sendable {
    let path: String
    let startedNs: UInt64
    private let stopFlag = Atomic<Bool>(false)
    private let outcome = Mutex<String?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(socket: String, path: String) throws {
        self.path = path
        startedNs = HostClock.monotonicNs()
        let recorder = try Recorder(socket: socket, path: path, recorder: "vmscope attach (R)")
        let thread = Thread { [self] in
            let result: String
            do {
                let reason = try recorder.run { self.stopFlag.load(ordering: .relaxed) }
                result = "recording finished (\(reason)): \(path), \(recorder.writer.entries) entries, \(recorder.writer.bytesWritten >> 10) KiB"
            } catch {
                result = "recording failed: \(error); \(path) replays up to its last flush"
            }
            outcome.withLock { $0 = result }
            done.signal()
        }
        thread.name = "vmscope-recorder"
        thread.start()
    }

    /// Set when the recording has ended (stopped, or on its own: the VMM went away, the disk filled).
    var finished: String? { outcome.withLock { $0 } }

    /// Stops it and waits for the file to be finished.
    func stop() -> String {
        stopFlag.store(true, ordering: .relaxed)
        done.wait()
        done.signal()
        return finished ?? "recording finished: \(path)"
    }
}

/// What the session's `R` runs: vmscope's recorder on its own connection, or a recording of the inspector's own
/// model (a stock QEMU).
protocol SessionRecording: AnyObject, Sendable {
    var path: String { get }
    var startedNs: UInt64 { get }
    var finished: String? { get }
    func stop() -> String
}

extension BackgroundRecording: SessionRecording {}

/// `R` on a stock QEMU: `ModelRecorder` on a thread of its own, given the newest model by the UI loop (`offer`, a
/// copy that costs nothing until the model changes), ten times a second at most.
final class BackgroundModelRecording: SessionRecording, @unchecked Sendable {
    // @unchecked: `recorder` is used by the recording thread only once `init` returns.
    let path: String
    let startedNs: UInt64
    private let recorder: ModelRecorder
    private let latest = Mutex<InspectorModel?>(nil)
    private let stopFlag = Atomic<Bool>(false)
    private let outcome = Mutex<String?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(path: String, socket: String, greeting: JSON, model: InspectorModel, recorder name: String) throws {
        self.path = path
        startedNs = HostClock.monotonicNs()
        recorder = try ModelRecorder(path: path, socket: socket, greeting: greeting, recorder: name, model: model)
        let thread = Thread { [self] in
            var reason = "stopped", peerGone = false
            var result: String
            do {
                while !stopFlag.load(ordering: .relaxed) {
                    usleep(100_000)
                    guard let m = latest.withLock({ m -> InspectorModel? in defer { m = nil }; return m }) else { continue }
                    try recorder.observe(m, nowNs: HostClock.monotonicNs())
                    if case .disconnected(let why) = m.connection { reason = "QEMU went away: \(why)"; peerGone = true; break }
                }
                try recorder.finish(reason: reason, peerGone: peerGone)
                result = "recording finished (\(reason)): \(path), \(recorder.writer.entries) entries, \(recorder.writer.bytesWritten >> 10) KiB"
            } catch {
                result = "recording failed: \(error); \(path) replays up to its last flush"
            }
            outcome.withLock { $0 = result }
            done.signal()
        }
        thread.name = "vmscope-model-recorder"
        thread.start()
    }

    func offer(_ m: InspectorModel) { latest.withLock { $0 = m } }

    var finished: String? { outcome.withLock { $0 } }

    func stop() -> String {
        stopFlag.store(true, ordering: .relaxed)
        done.wait()
        done.signal()
        return finished ?? "recording finished: \(path)"
    }
}
