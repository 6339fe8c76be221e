import Foundation
import Testing

/// A fresh machine has the Swift toolchain, ncursesw, zlib and tmux, nothing else (issue 27): the optional system
/// libraries are loaded at run time, never linked, and their absence is one line naming the package.
@Suite struct BareMachineTests {
    /// The shared libraries an ELF file names in its dynamic section (`DT_NEEDED`), read with binutils' readelf
    /// (the Swift toolchain's linker comes with it).
    static func needed(_ path: String) throws -> [String] {
        let r = try runProcess("/usr/bin/readelf", ["-d", "-W", path])
        try #require(r.status == 0, "readelf -d \(path): \(r.stderr)")
        return r.stdout.split(separator: "\n").compactMap { line in
            guard line.contains("(NEEDED)"), let open = line.firstIndex(of: "["), let close = line.lastIndex(of: "]") else { return nil }
            return String(line[line.index(after: open)..<close])
        }
    }

    @Test func theBinaryLinksNoOptionalLibrary() throws {
        for binary in [Binary.url.path, Binary.url.deletingLastPathComponent().appendingPathComponent("vmscope-bench").path]
        where FileManager.default.fileExists(atPath: binary) {
            let libs = try Self.needed(binary)
            #expect(libs.contains { $0.hasPrefix("libc.so") }, "the dynamic section was read: \(libs)")
            for optional in ["libtracefs", "libtraceevent", "libvirt"] {
                #expect(!libs.contains { $0.hasPrefix(optional) }, "\(binary) needs \(optional) at load time: \(libs)")
            }
        }
    }

    /// Where libtracefs1/libtraceevent1 are absent (as on a fresh machine), `vmscope trace` says which packages to
    /// install, in one line, exit 2; where they are present it gets past loading them.
    @Test func traceWithoutTheLibrariesNamesThePackages() throws {
        let present = ["libtracefs.so.1", "libtraceevent.so.1"].allSatisfy { lib in
            ["/usr/lib/x86_64-linux-gnu/", "/lib/x86_64-linux-gnu/", "/usr/lib/"].contains { FileManager.default.fileExists(atPath: $0 + lib) }
        }
        // A pid no process has (above the kernel's largest pid_max): with the libraries, tracing stops there.
        let r = try Binary.run(["trace", "2147483000"], prefix: ["/usr/bin/timeout", "-s", "KILL", "20"])
        if present {
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains("no process 2147483000") && !r.stderr.contains("apt-get install libtracefs1"), "\(r.stderr)")
        } else {
            #expect(r.status == 2, "\(r.stderr)")
            #expect(r.stderr.contains("apt-get install libtracefs1 libtraceevent1"), "\(r.stderr)")
            #expect(r.stderr.split(separator: "\n").count == 1, "one line: \(r.stderr)")
            // The packages within the first 80 columns: the inspector's status line shows no more of it.
            let end = r.stderr.range(of: "libtraceevent1").map { r.stderr.distance(from: r.stderr.startIndex, to: $0.upperBound) }
            #expect(end.map { $0 <= 80 } == true, "the packages come late: \(r.stderr)")
        }
    }
}
