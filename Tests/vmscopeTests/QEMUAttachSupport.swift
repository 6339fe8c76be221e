@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing
import TestSupport

/// Two QEMU machines unlike each other in type, vCPUs, memory and devices (the second has RAM above 4 GiB
/// and a pc-dimm on a hot-pluggable memory slot).
let qemuConfigurations: [(name: String, machine: String, vcpus: Int, arguments: [String])] = [
    ("pc-2vcpu-256M", "pc", 2, ["-machine", "pc", "-m", "256", "-smp", "2", "-nodefaults"]),
    ("q35-3vcpu-5G-dimm", "q35", 3, ["-machine", "q35", "-m", "5G,slots=2,maxmem=8G", "-object", "memory-backend-ram,id=m1,size=128M",
                                     "-device", "pc-dimm,memdev=m1,id=dimm1", "-smp", "3", "-nodefaults"]),
]

/// The test's own reading of QEMU's text, with regular expressions (not the inspector's parser), so the two
/// are checked against each other.
enum Independent {
    static func normalized(_ s: String) -> String { s.replacingOccurrences(of: "\r\n", with: "\n") }

    /// "start+size" of each KVM-mapped range in the flat view of address space "memory".
    static func kvmRanges(_ mtree: String) throws -> [String] {
        try kvmRangeBounds(mtree).map { "\(String($0.start, radix: 16))+\(String($0.end - $0.start + 1, radix: 16))" }
    }

    /// Start and (inclusive) end of each KVM-mapped range in the flat view of address space "memory".
    static func kvmRangeBounds(_ mtree: String) throws -> [(start: UInt64, end: UInt64)] {
        let block = try #require(normalized(mtree).components(separatedBy: "FlatView #").first { $0.contains("AS \"memory\",") })
        let re = try NSRegularExpression(pattern: #"^\s+([0-9a-f]{16})-([0-9a-f]{16}) \(prio -?\d+, [^)]+\): .* KVM$"#, options: .anchorsMatchLines)
        return re.matches(in: block, range: NSRange(block.startIndex..., in: block)).map { m in
            (UInt64(block[Range(m.range(at: 1), in: block)!], radix: 16)!, UInt64(block[Range(m.range(at: 2), in: block)!], radix: 16)!)
        }
    }

    /// Register `name` (EIP, EAX, ESP, EFL, CR0, or a segment like CS) of each CPU#N block, as printed.
    static func register(_ name: String, _ text: String) throws -> [Int: UInt64] {
        var out: [Int: UInt64] = [:]
        let re = try NSRegularExpression(pattern: "(?:^|\\s)\(name) ?=([0-9a-f]+)")
        for block in normalized(text).components(separatedBy: "CPU#").dropFirst() {
            guard let n = Int(block.prefix { $0.isNumber }),
                  let m = re.firstMatch(in: block, range: NSRange(block.startIndex..., in: block)) else { continue }
            out[n] = UInt64(block[Range(m.range(at: 1), in: block)!], radix: 16)
        }
        return out
    }
}

func hmp(_ c: ControlClient, _ command: String) throws -> String {
    try c.execute("human-monitor-command", .object([("command-line", .string(command))])).stringValue ?? ""
}

/// The KVM-mapped ranges once the firmware has stopped remapping them. SeaBIOS maps and unmaps its ROM and low
/// areas as it boots: here 5 ranges, 2 from 0.1 s, 6 from about 1 s and unchanged for the 25 s watched; under CI
/// 1 s in was still before the last change. Settled: the same ranges on every read for `quiet` seconds.
func settledKVMRanges(_ c: ControlClient, quiet: Double = 3, timeout: Double = 60) throws -> [String] {
    let deadline = Date().addingTimeInterval(timeout)
    var last = try Independent.kvmRanges(try hmp(c, "info mtree -f"))
    var since = Date()
    while Date().timeIntervalSince(since) < quiet {
        guard Date() < deadline else { throw SettleError(last: last, timeout: timeout) }
        Thread.sleep(forTimeInterval: 0.1)
        let now = try Independent.kvmRanges(try hmp(c, "info mtree -f"))
        if now != last { last = now; since = Date() }
    }
    return last
}

struct SettleError: Error, CustomStringConvertible {
    let last: [String], timeout: Double
    var description: String { "QEMU's memory map still changed after \(timeout) s (last \(last))" }
}

let qemuAvailable = QEMUInstance.binary != nil

/// Starts QEMU and says on the test's output when it had to fall back from KVM.
func startQEMU(_ arguments: [String], monitors: Int = 2, directory: String? = nil) throws -> QEMUInstance {
    let q = try QEMUInstance(arguments: arguments, monitors: monitors, directory: directory)
    if let why = q.fallbackReason { print("QEMU runs with -accel \(q.accelerator): \(why)") }
    return q
}

