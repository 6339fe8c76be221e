import Foundation
import Schema

/// One figure of a benchmark run (`vmscope-bench --json`).
public struct BenchResult: Codable, Sendable, Equatable {
    public var name: String
    public var value: Double
    public var unit: String
    /// The target as written in the issue (e.g. "<= 10"), or nil when the figure is a baseline or context.
    public var target: String?
    /// Name of the result this one is compared against, and value / baseline.
    public var baseline: String?
    public var ratio: Double?
    public var note: String?
    /// Whether the value meets `target` (nil when there is none).
    public var met: Bool?
    /// Where the value goes, largest first (a callgrind profile: each function's own instructions per item).
    public var breakdown: [Share]?

    public init(name: String, value: Double, unit: String, target: Target? = nil, baseline: BenchResult? = nil,
                note: String? = nil) {
        self.name = name
        self.value = value
        self.unit = unit
        self.target = target?.description
        self.met = target?.isMet(by: value)
        self.baseline = baseline?.name
        if let b = baseline, b.value != 0 { self.ratio = value / b.value }
        self.note = note
    }
}

/// A part of a figure: a function and its share.
public struct Share: Codable, Sendable, Equatable {
    public var name: String
    public var value: Double
}

/// A target such as "≤ 10 ms" or "≥ 1,000,000 records/s".
public enum Target: Sendable, CustomStringConvertible {
    case atMost(Double)
    case atLeast(Double)

    public var description: String {
        switch self {
        case .atMost(let v): "<= \(format(v))"
        case .atLeast(let v): ">= \(format(v))"
        }
    }

    public func isMet(by value: Double) -> Bool {
        switch self {
        case .atMost(let v): value <= v
        case .atLeast(let v): value >= v
        }
    }
}

func format(_ v: Double) -> String {
    if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
    return String(format: abs(v) >= 100 ? "%.1f" : "%.4g", v)
}

/// Nanoseconds on the monotonic clock.
@inline(__always) public func nowNs() -> UInt64 { HostClock.monotonicNs() }

/// Runs `body` `repetitions` times and returns each run's duration in nanoseconds.
public func sample(_ repetitions: Int, _ body: (Int) throws -> Void) rethrows -> [Double] {
    var out: [Double] = []
    out.reserveCapacity(repetitions)
    for i in 0..<repetitions {
        let t = nowNs()
        try body(i)
        out.append(Double(nowNs() - t))
    }
    return out
}

public func median(_ xs: [Double]) -> Double {
    precondition(!xs.isEmpty, "median of nothing")
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Resident set size of this process in bytes (`VmRSS` of /proc/self/status).
public func residentBytes() -> UInt64 {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kb = UInt64(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
    return kb * 1024
}

/// The machine a run was measured on.
public struct MachineInfo: Codable, Sendable {
    public var hostname: String
    public var cpu: String
    public var cores: Int
    public var kernel: String
    public var date: String

    public static func current() -> MachineInfo {
        var u = utsname()
        uname(&u)
        func field<T>(_ t: T) -> String {
            withUnsafeBytes(of: t) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) }
        let iso = ISO8601DateFormatter()
        iso.formatOptions = [.withFullDate]
        return MachineInfo(hostname: field(u.nodename), cpu: model ?? "unknown",
                           cores: ProcessInfo.processInfo.activeProcessorCount,
                           kernel: "\(field(u.sysname)) \(field(u.release)) \(field(u.machine))",
                           date: iso.string(from: Date()))
    }
}

/// What `vmscope-bench --json` prints.
public struct BenchReport: Codable, Sendable {
    public var machine: MachineInfo
    public var results: [BenchResult]

    public init(machine: MachineInfo, results: [BenchResult]) {
        self.machine = machine
        self.results = results
    }

    public func json() -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: (try? e.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// A Markdown table of the results (docs/benchmarks.md).
    public func markdown(command: String) -> String {
        var s = """
        # Benchmarks

        Generated by `\(command)`; do not edit by hand.

        - date: \(machine.date)
        - machine: \(machine.hostname), \(machine.cpu), \(machine.cores) cores, \(machine.kernel)
        - values are medians over repeated runs (release build); ratio = value / baseline measured in the same run

        | name | value | unit | target | met | baseline | ratio | note |
        |---|---|---|---|---|---|---|---|

        """
        for r in results {
            let met = r.met.map { $0 ? "yes" : "**no**" } ?? ""
            s += "| \(r.name) | \(format(r.value)) | \(r.unit) | \(r.target ?? "") | \(met) | \(r.baseline ?? "") | "
                + "\(r.ratio.map { format($0) + "×" } ?? "") | \((r.note ?? "").split(whereSeparator: \.isNewline).joined(separator: " ")) |\n"
        }
        for r in results {
            guard let parts = r.breakdown, !parts.isEmpty else { continue }
            s += "\n## Where \(r.name) goes\n\nEach function's own \(r.unit) per item (callgrind, the same run), largest first; "
                + "together \(format(parts.map(\.value).reduce(0, +))) of \(format(r.value)).\n\n| function | \(r.unit) |\n|---|---|\n"
            for p in parts { s += "| `\(p.name.replacingOccurrences(of: "|", with: "\\|"))` | \(format(p.value)) |\n" }
        }
        return s
    }
}
