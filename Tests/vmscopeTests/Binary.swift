import Foundation

/// The `vmscope` executable SwiftPM built next to this test bundle, run as a user would run it.
enum Binary {
    static var url: URL {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        // .build/<triple>/debug/vmscopePackageTests.xctest -> .build/<triple>/debug/vmscope
        return exe.deletingLastPathComponent().appendingPathComponent("vmscope")
    }

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `vmscope args…` to completion with no stdin.
    static func run(_ args: [String], executable: URL? = nil, prefix: [String] = []) throws -> Result {
        let process = Process()
        let out = Pipe(), err = Pipe()
        if prefix.isEmpty {
            process.executableURL = executable ?? url
            process.arguments = args
        } else {
            process.executableURL = URL(fileURLWithPath: prefix[0])
            process.arguments = Array(prefix.dropFirst()) + [(executable ?? url).path] + args
        }
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                      stderr: String(decoding: e, as: UTF8.self))
    }
}
