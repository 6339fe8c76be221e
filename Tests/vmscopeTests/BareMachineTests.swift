import Foundation
import HostTracing
@testable import Schema
import Testing
import TestSupport

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
        let present = tracingLibrariesMissing == nil
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

    /// `top --once` beside a VM: its traced columns' `-` says why, naming the packages where they are absent (it
    /// said "tracing needs root and libtracefs", whatever the reason); as root with them, nothing is missing.
    @Test(.enabled(if: kvmPresent && getuid() == 0, "needs root and /dev/kvm"))
    func topOnceSaysWhyItsTracedColumnsAreEmpty() throws {
        let vmm = try RunningVMM()
        defer { vmm.stop() }
        let r = try Binary.run(["top", "--once"], prefix: ["/usr/bin/timeout", "-s", "KILL", "30"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains(" \(vmm.process.processIdentifier) "), "the VMM's row:\n\(r.stdout)")
        let json = try Binary.run(["top", "--once", "--json"], prefix: ["/usr/bin/timeout", "-s", "KILL", "30"])
        let notTraced = try JSON.parse(json.stdout)["not-traced"]
        if tracingLibrariesMissing != nil {
            #expect(r.stdout.contains("- in USEREXIT/s and MEMFLT/s: not traced: tracing needs apt-get install libtracefs1 libtraceevent1"),
                    "\(r.stdout)")
            #expect(notTraced?.stringValue?.contains("apt-get install libtracefs1 libtraceevent1") == true, "\(json.stdout)")
        } else if (try? TraceSession.tracingDirectory()) != nil {
            #expect(!r.stdout.contains("not traced"), "\(r.stdout)")
            #expect(notTraced == .null, "\(json.stdout)")
        } else {
            // The libraries, but no tracefs to write: the legend says that, not a guess.
            #expect(r.stdout.contains("not traced: ") && !r.stdout.contains("needs root and libtracefs"), "\(r.stdout)")
        }
    }
}
