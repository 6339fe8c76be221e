import Foundation
import Logging
import VMM

/// Conversions on a real VM: a small VM as the baseline, then a VM of `sizes.vmRAM` cut into `sizes.vmRuns`
/// alternating runs (the scale the issue names: 1 TiB, 16,000 runs), with the guest running throughout.
public func conversionBenchmarks(_ sizes: BenchSizes, devicePath: String = "/dev/kvm") throws -> [BenchResult] {
    guard FileManager.default.fileExists(atPath: devicePath) else {
        return [BenchResult(name: "vmm-convert-ms-16k-runs", value: .nan, unit: "ms",
                            note: "skipped: \(devicePath) does not exist")]
    }
    func vm(ram: UInt64) throws -> ReferenceVMM {
        var c = VMMConfiguration()
        c.vcpus = 1
        c.ramSize = ram
        c.allowMutations = true
        c.devicePath = devicePath
        var logger = Logger(label: "vmscope.bench")
        logger.logLevel = .warning
        let vmm = try ReferenceVMM(c, logger: logger)
        vmm.start()
        return vmm
    }
    /// Median of converting 2 MiB at `gpa` to shared and back, each direction timed on its own.
    func convertMedian(_ vmm: ReferenceVMM, gpa: UInt64) throws -> Double {
        var times: [Double] = []
        for _ in 0..<sizes.repetitions {
            for toPrivate in [false, true] {
                let t = nowNs()
                _ = try vmm.setMemoryAttributes(gpa: gpa, size: 2 << 20, toPrivate: toPrivate)
                times.append(Double(nowNs() - t))
            }
        }
        return median(times) / 1e6
    }

    let small = try vm(ram: 256 << 20)
    let baselineMs = try convertMedian(small, gpa: 64 << 20)
    small.stop()
    let baseline = BenchResult(name: "vmm-convert-ms-small-vm", value: baselineMs, unit: "ms",
                               note: "baseline: 256 MiB VM, 3 runs, 2 MiB to shared and back")

    let before = residentBytes()
    let big = try vm(ram: sizes.vmRAM)
    defer { big.stop() }
    let built = nowNs()
    for i in stride(from: 1, to: sizes.vmRuns, by: 2) {
        _ = try big.setMemoryAttributes(gpa: UInt64(i) * sizes.vmChunk, size: sizes.vmChunk, toPrivate: false)
    }
    let buildS = Double(nowNs() - built) / 1e9
    let runs = try big.queryMemoryAttributes().runs.count
    // Inside a private run in the middle of the map.
    let gpa = UInt64(sizes.vmRuns / 2 & ~1) * sizes.vmChunk + sizes.vmChunk / 2
    let bigMs = try convertMedian(big, gpa: gpa)
    let rss = Double(residentBytes()) / Double(1 << 20)
    let label = "\(sizes.vmRAM >> 30) GiB VM, \(runs) runs, \(big.memslots.count) memslots"
    return [
        baseline,
        BenchResult(name: "vmm-convert-ms-16k-runs", value: bigMs, unit: "ms", target: .atMost(10), baseline: baseline,
                    note: "\(label), 2 MiB to shared and back"),
        BenchResult(name: "vmm-build-16k-runs-s", value: buildS, unit: "s",
                    note: "\(sizes.vmRuns / 2) conversions of \(sizes.vmChunk >> 20) MiB, one after another"),
        BenchResult(name: "vmm-rss-mib-16k-runs", value: rss, unit: "MiB", target: .atMost(256),
                    note: "whole process (\(String(format: "%.0f", Double(before) / Double(1 << 20))) MiB before the VM)"),
    ]
}
