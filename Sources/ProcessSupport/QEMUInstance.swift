import Foundation

/// A stock `qemu-system-x86_64` started for a test or a benchmark, with QMP sockets in a private directory.
///
/// It asks for `-accel kvm` first and falls back to `-accel tcg` only when QEMU refuses KVM (exits before its
/// sockets appear); `accelerator` and `fallbackReason` say which ran and why.
public final class QEMUInstance: @unchecked Sendable {
    // @unchecked: every stored property is a constant.
    public static let candidates = ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"]
    /// The binary, or nil when QEMU is not installed.
    public static let binary = candidates.first { FileManager.default.isExecutableFile(atPath: $0) }

    public let process: ChildProcess
    public let directory: String
    /// One path per QMP monitor asked for (QEMU serves one client per monitor at a time).
    public let qmpSockets: [String]
    public let accelerator: String
    public let fallbackReason: String?
    public let logPath: String
    /// Whether `directory` was made here (and is removed by `stop()`).
    private let ownsDirectory: Bool

    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts QEMU with `arguments` (machine, memory, CPUs, devices) plus `-display none` and `monitors` QMP
    /// sockets; waits until every socket exists. With `directory` the sockets go there (a restart on the same
    /// paths); without, into a new private directory.
    /// `binary` replaces the installed QEMU (a wrapper, say).
    public init(arguments: [String], monitors: Int = 1, directory given: String? = nil, timeout: Double = 20,
                binary: String? = nil) throws {
        guard let binary = binary ?? Self.binary else { throw StartError(description: "qemu-system-x86_64 is not installed") }
        if let given {
            directory = given
            ownsDirectory = false
        } else {
            var template = Array((NSTemporaryDirectory() + "vmscope-qemu-XXXXXX").utf8CString)
            guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
                throw StartError(description: "mkdtemp: \(String(cString: strerror(errno)))")
            }
            directory = String(cString: dir)
            ownsDirectory = true
        }
        let dir = directory
        qmpSockets = (0..<monitors).map { "\(dir)/qmp\($0).sock" }
        for s in qmpSockets { unlink(s) }
        logPath = directory + "/qemu.log"
        var refusal: String?
        for accel in ["kvm", "tcg"] {
            if accel == "kvm" && !FileManager.default.fileExists(atPath: "/dev/kvm") {
                refusal = "/dev/kvm does not exist"
                continue
            }
            var argv = [binary, "-accel", accel, "-display", "none"] + arguments
            for s in qmpSockets { argv += ["-qmp", "unix:\(s),server=on,wait=off"] }
            let p = try ChildProcess(argv, redirects: .init(stderr: logPath))
            let deadline = Date().addingTimeInterval(timeout)
            // Listening, not just bound: QEMU binds the path a moment before it listens, and a connect in
            // between is refused (seen under load).
            while p.isRunning && Date() < deadline && !Self.listening(qmpSockets) {
                usleep(20_000)
            }
            if Self.listening(qmpSockets) && p.isRunning {
                process = p
                accelerator = accel
                fallbackReason = refusal
                return
            }
            p.terminate(grace: 1)
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            if accel == "tcg" || p.poll() == nil {
                if ownsDirectory { try? FileManager.default.removeItem(atPath: directory) }
                throw StartError(description: "QEMU (-accel \(accel)) did not start: \(log.suffix(500))")
            }
            refusal = "QEMU refused -accel kvm: \(log.split(separator: "\n").last(where: { !$0.contains("warning") }) ?? "no reason given")"
        }
        fatalError("unreachable")
    }

    /// Whether every path is a listening Unix socket (/proc/net/unix: flag __SO_ACCEPTCON, 0x10000).
    static func listening(_ paths: [String]) -> Bool {
        guard let table = try? String(contentsOfFile: "/proc/net/unix", encoding: .utf8) else {
            return paths.allSatisfy { FileManager.default.fileExists(atPath: $0) }
        }
        var listeners = Set<Substring>()
        for line in table.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 8, let flags = UInt32(f[3], radix: 16), flags & 0x10000 != 0 else { continue }
            listeners.insert(f[7])
        }
        return paths.allSatisfy { listeners.contains(Substring($0)) }
    }

    /// SIGTERM (QEMU shuts down cleanly on it), SIGKILL after `grace` seconds; removes the directory when it
    /// was made here.
    public func stop(grace: Double = 5) {
        process.terminate(grace: grace)
        if ownsDirectory { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Kills QEMU at once, as a crash would; the socket files stay behind.
    public func kill() {
        process.signal(SIGKILL)
        process.wait()
    }

    deinit { stop(grace: 1) }
}
