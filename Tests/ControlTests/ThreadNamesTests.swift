import ControlProtocol
import ControlServer
import Foundation
import Testing
import TestSupport

/// The threads vmscope starts carry their names into the kernel, where `top -H`, `ps -L` and perf read them
/// (Foundation's `Thread.name` stays inside Foundation on Linux: every such thread showed its process's name).
@Suite(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ThreadNamesTests {
    /// The kernel's names of this process's threads.
    static func threadNames() -> [String] {
        let dir = "/proc/self/task"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap {
            (try? String(contentsOfFile: "\(dir)/\($0)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines)
        }
    }

    @Test func theControlServerAndTheClientsReaderAreNamed() throws {
        let s = try Served { $0.vcpus = 1 }
        defer { s.stop() }
        let client = try ControlClient(path: s.path)
        defer { client.close() }
        let names = Self.threadNames()
        #expect(names.contains(ControlServer.threadName), "threads: \(names)")
        #expect(names.contains(ControlClient.readerThreadName), "threads: \(names)")
        // The kernel keeps 15 bytes of a name; a longer one would not be set at all.
        #expect(ControlServer.threadName.utf8.count <= 15 && ControlClient.readerThreadName.utf8.count <= 15)
    }
}
