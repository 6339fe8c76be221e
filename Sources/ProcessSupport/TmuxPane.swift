import Foundation

/// A program in a detached tmux pane on a tmux server of its own (`-L`), driven as a person would: keys in,
/// screen text out. Tests and benchmarks use it on the real `vmscope` binary.
///
/// Every tmux call goes through `ChildProcess`, so the server started here neither inherits the caller's pipes
/// (they would never close) nor its blocked signals (the program in the pane must hear Ctrl-C as from a shell).
/// Each pane has its own server, so no two users ever share one that is shutting down; `deinit` kills it.
public final class TmuxPane: @unchecked Sendable {
    // @unchecked: every stored property is a constant.
    public static let tmux = ["/usr/bin/tmux", "/usr/local/bin/tmux"].first { FileManager.default.isExecutableFile(atPath: $0) }
    public let name = "vmscope-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts `command` (a shell command line) on a width×height pane.
    public init(_ command: String, width: Int = 160, height: Int = 48) throws {
        guard let tmux = Self.tmux else { throw StartError(description: "tmux is not installed") }
        let status = (try? ChildProcess.run([tmux, "-L", name, "new-session", "-d", "-s", name, "-x", "\(width)", "-y", "\(height)", command])) ?? -1
        guard status == 0 else { throw StartError(description: "tmux new-session exited with \(status)") }
    }

    deinit { kill() }

    /// Ends the pane's tmux server and everything in it.
    public func kill() { tmux(["kill-server"]) }

    /// Runs one tmux command on this pane's server; its standard output when `output` is asked for.
    @discardableResult
    func tmux(_ args: [String], output: Bool = false) -> (status: Int32, stdout: String) {
        let file = output ? NSTemporaryDirectory() + "\(name)-\(UInt32.random(in: 0...UInt32.max)).out" : nil
        defer { if let file { unlink(file) } }
        let status = (try? ChildProcess.run([Self.tmux!, "-L", name] + args, redirects: .init(stdout: file))) ?? -1
        let text = file.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? ""
        return (status, text)
    }

    public func keys(_ keys: String...) { tmux(["send-keys", "-t", name] + keys) }

    public func resize(width: Int, height: Int) { tmux(["resize-window", "-t", name, "-x", "\(width)", "-y", "\(height)"]) }

    /// The pane's text, as `capture-pane -p` prints it.
    public func capture() -> String { tmux(["capture-pane", "-p", "-t", name], output: true).stdout }

    /// The pane's text with its colours and attributes as SGR escape sequences (`capture-pane -e`).
    public func captureStyled() -> String { tmux(["capture-pane", "-p", "-e", "-t", name], output: true).stdout }

    /// The process running in the pane (the shell, or the program itself when the command `exec`s it).
    public var pid: Int32? {
        let r = tmux(["list-panes", "-t", name, "-F", "#{pane_pid}"], output: true)
        return r.status == 0 ? Int32(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) : nil
    }

    /// Polls the pane until `condition` holds (or `seconds` pass); returns the last capture.
    public func waitFor(_ seconds: Double = 10, _ condition: (String) -> Bool) -> String {
        let deadline = Date().addingTimeInterval(seconds)
        var screen = capture()
        while !condition(screen) && Date() < deadline {
            usleep(100_000)
            screen = capture()
        }
        return screen
    }
}
