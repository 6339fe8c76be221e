import Foundation

/// A child process started with `posix_spawn`, an empty signal mask and default signal dispositions.
///
/// Foundation's `Process` passes on the parent's blocked signals: a child started from a test runner (which
/// blocks SIGTERM, SIGINT, ...) then ignores `terminate()` and Ctrl-C for good. Everything that starts a
/// program it must later signal (QEMU, tmux, the VMM) goes through this type instead.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: `status` is written once under `lock`.
    public let pid: pid_t
    public let argv: [String]
    private let lock = NSLock()
    private var status: Int32?

    /// Where the child's standard streams go: a file path (stdout/stderr are created or truncated), or
    /// /dev/null when nil.
    public struct Redirects: Sendable {
        public var stdin: String?
        public var stdout: String?
        public var stderr: String?
        /// Keep this process's own streams instead (a command started under `vmscope trace --exec`).
        public var inherit = false
        public init(stdin: String? = nil, stdout: String? = nil, stderr: String? = nil) {
            self.stdin = stdin
            self.stdout = stdout
            self.stderr = stderr
        }
        public static var inherited: Redirects { var r = Redirects(); r.inherit = true; return r }
    }

    /// Starts `argv[0]` (an absolute path) with `argv`; throws with the errno text when it cannot start.
    public init(_ argv: [String], redirects: Redirects = Redirects()) throws {
        precondition(!argv.isEmpty)
        self.argv = argv
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE, SIGUSR1, SIGUSR2] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if !redirects.inherit {
            posix_spawn_file_actions_addopen(&actions, 0, redirects.stdin ?? "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, redirects.stdout ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            posix_spawn_file_actions_addopen(&actions, 2, redirects.stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        }
        let cargs = argv.map { strdup($0) } + [nil]
        defer { for a in cargs { free(a) } }
        var child: pid_t = 0
        var rc = posix_spawn(&child, argv[0], &actions, &attr, cargs, environ)
        // ETXTBSY: the file was just written, and a process forked meanwhile (by another thread) still holds the
        // writer's descriptor until it execs. Transient by nature: a second later it is gone.
        var tries = 0
        while rc == ETXTBSY && tries < 50 {
            tries += 1
            usleep(20_000)
            rc = posix_spawn(&child, argv[0], &actions, &attr, cargs, environ)
        }
        guard rc == 0 else { throw SpawnError(path: argv[0], errno: rc) }
        pid = child
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            _ = wait()
        }
    }

    /// Whether the child has not exited yet (reaps it when it has).
    public var isRunning: Bool { poll() == nil }

    /// The exit status once known (128+n when killed by signal n), without waiting.
    public func poll() -> Int32? {
        lock.lock(); defer { lock.unlock() }
        if let status { return status }
        var raw: Int32 = 0
        let r = waitpid(pid, &raw, WNOHANG)
        if r == pid { status = Self.decode(raw) }
        return status
    }

    /// Waits for the exit, at most `seconds` (nil: for ever); nil when it is still running then.
    @discardableResult
    public func wait(seconds: Double? = nil) -> Int32? {
        let deadline = seconds.map { Date().addingTimeInterval($0) }
        while true {
            if let s = poll() { return s }
            if let deadline, Date() >= deadline { return nil }
            usleep(5_000)
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace` seconds; waits for the exit.
    @discardableResult
    public func terminate(grace: Double = 5) -> Int32 {
        if let s = poll() { return s }
        kill(pid, SIGTERM)
        if let s = wait(seconds: grace) { return s }
        kill(pid, SIGKILL)
        return wait()!
    }

    public func signal(_ sig: Int32) { if poll() == nil { kill(pid, sig) } }

    static func decode(_ raw: Int32) -> Int32 {
        let sig = raw & 0x7F
        return sig == 0 ? (raw >> 8) & 0xFF : 128 + sig
    }

    /// Runs to completion and returns the exit status.
    public static func run(_ argv: [String], redirects: Redirects = Redirects()) throws -> Int32 {
        try ChildProcess(argv, redirects: redirects).wait()!
    }
}

public struct SpawnError: Error, CustomStringConvertible {
    public var path: String
    public var errno: Int32
    public var description: String { "cannot start \(path): \(String(cString: strerror(errno)))" }
}
