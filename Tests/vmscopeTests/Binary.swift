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
        let exe = (executable ?? url).path
        if prefix.isEmpty { return try runProcess(exe, args) }
        return try runProcess(prefix[0], Array(prefix.dropFirst()) + [exe] + args)
    }
}
