import Foundation
import Testing
@testable import VMM

/// Resident set size of this process, from /proc/self/status.
func residentBytes() -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
    return kb * 1024
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ScaleTests {
    /// A 1 TiB VM (sparse backings) converted into 16,001 alternating runs: memslots follow, RSS stays small.
    /// Timing figures live in the benchmark (`swift run -c release vmscope-bench`), not here.
    @Test func tebibyteVMWithSixteenThousandRuns() throws {
        // What this VM costs: the process's growth from here (the test process runs other suites beside this one,
        // whose memory an absolute bound would count too: it read 291 MiB once under CI's parallel load).
        let rssBefore = residentBytes()
        let vmm = try makeVMM {
            $0.ramSize = 1 << 40
            $0.vcpus = 1
            $0.sharedAliasBit = 41
        }
        vmm.start()
        defer { vmm.stop() }
        let chunk: UInt64 = 64 << 20
        for i in stride(from: 1 as UInt64, to: 16000, by: 2) {
            _ = try vmm.setMemoryAttributes(gpa: i * chunk, size: chunk, toPrivate: false)
        }
        let q = try vmm.queryMemoryAttributes()
        #expect(q.runs.count == 16001)
        #expect(q.sharedBytes == 8000 * chunk)
        try checkLayout(vmm)
        let rssAfter = residentBytes()
        #expect(rssAfter <= rssBefore || rssAfter - rssBefore < 256 << 20, "RSS \(rssBefore >> 20) → \(rssAfter >> 20) MiB")
        // The guest keeps running in its low memory throughout.
        let beat = vmm.guestCounters(0).heartbeat
        #expect(eventually { vmm.guestCounters(0).heartbeat > beat })
        #expect(vmm.guestCounters(0).integrityErrors == 0)
    }
}
