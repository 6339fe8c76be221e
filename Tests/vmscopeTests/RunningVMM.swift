import Foundation
import Testing

/// `vmscope vmm` started as a user would, on a fresh socket; `stop()` sends SIGTERM and waits.
final class RunningVMM {
    let socket: String
    let process = Process()
    let log = Pipe()

    init(_ extra: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws {
        socket = FileManager.default.temporaryDirectory
            .appendingPathComponent("vmscope-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock").path
        process.executableURL = Binary.url
        process.arguments = ["vmm", "--socket", socket, "--ram", "64M"] + extra
        process.standardError = log
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        var up = false
        for _ in 0..<500 where !up {
            up = FileManager.default.fileExists(atPath: socket)
            if !up { usleep(10_000) }
        }
        try #require(up, "vmscope vmm did not create \(socket)", sourceLocation: sourceLocation)
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}

/// Runs an executable to completion (no stdin) and returns its status and output.
func runProcess(_ path: String, _ args: [String], environment: [String: String]? = nil) throws -> Binary.Result {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    if let environment { p.environment = environment }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = FileHandle.nullDevice
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Binary.Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                         stderr: String(decoding: e, as: UTF8.self))
}
