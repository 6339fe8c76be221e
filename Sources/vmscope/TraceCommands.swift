import ArgumentParser
import ControlProtocol
import Foundation
import Inspector
import Synchronization
import Tracing

private let traceStop = Atomic<Int32>(0)

/// `vmscope trace PID`: the decoded KVM tracepoint stream of one process's threads, on stdout.
struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace",
        abstract: "Print the KVM tracepoint events of one VMM process's threads, decoded (any VMM; needs root or tracefs access).",
        discussion: """
            Events come from a private tracefs instance (instances/vmscope-PID), filtered to the process's threads and \
            removed on exit (and by the next start, after a SIGKILL). Global tracing state is not touched. Under the \
            software KVM of some hosts only kvm_userspace_exit and kvm_mmio fire; on hardware KVM kvm_page_fault and \
            kvm_exit do too. With --json each event is one JSON object a line. Exit status 2 when tracing cannot start \
            (the reason and the fix on stderr).
            """)

    @Argument(help: "The VMM's process id.") var pid: Int32
    @Flag(help: "One JSON object a line.") var json = false
    @Option(help: "Stop after this long, e.g. 10s (default: until Ctrl-C or the process exits).") var duration: String?
    @Option(help: "Comma-separated events (default: all of kvm_userspace_exit, kvm_mmio, kvm_hypercall, kvm_page_fault, kvm_exit).")
    var events: String?

    func validate() throws {
        if let duration, parseDuration(duration) == nil {
            throw ValidationError("--duration '\(duration)' is not a duration from 0 to a year (e.g. 10, 10s, 5m)")
        }
        if let events {
            let known = Set(EventLayouts.decoded.map(\.name))
            for e in events.split(separator: ",") where !known.contains(String(e)) {
                throw ValidationError("--events: '\(e)' is not one of \(known.sorted().joined(separator: ", "))")
            }
        }
    }

    func run() throws {
        var err = StandardError()
        for sig in [SIGINT, SIGTERM, SIGHUP, SIGPIPE] { signal(sig) { s in traceStop.store(s, ordering: .relaxed) } }
        let session: TraceSession
        do { session = try TraceSession(pid: pid, events: events.map { $0.split(separator: ",").map(String.init) }) } catch {
            print("vmscope trace: \(error)", to: &err)
            throw ExitCode(2)
        }
        defer { session.close() }
        let deadline = duration.flatMap(parseDuration).map { HostClock.monotonicNs() + $0 }
        let out = FileHandle.standardOutput
        while traceStop.load(ordering: .relaxed) == 0 {
            let batch = session.read()
            if !batch.isEmpty {
                var text = ""
                for e in batch { text += (json ? e.json.serialized : e.line) + "\n" }
                out.write(Data(text.utf8))
            }
            if let deadline, HostClock.monotonicNs() >= deadline { break }
            if kill(pid, 0) != 0 && errno == ESRCH { print("vmscope trace: process \(pid) exited", to: &err); break }
            if batch.isEmpty { usleep(20_000) }
        }
        print("vmscope trace: \(session.decoded) events decoded, \(session.missed) dropped by the kernel's buffer, \(session.foreign) from other threads discarded",
              to: &err)
    }
}

extension TraceEvent {
    /// One line for people: time, thread, event and its decoded fields.
    var line: String {
        let fields = members.dropFirst(4).map { k, v in
            let text: String = switch v {
            case .string(let s): s
            case .array(let a): a.compactMap(\.stringValue).joined(separator: "|")
            case .int(let i): String(i)
            case .uint(let u): TraceEvent.addressMembers.contains(k) ? "0x" + String(u, radix: 16) : String(u)
            default: v.serialized
            }
            return "\(k)=\(text)"
        }
        let name = members.first?.1.stringValue ?? "?"
        return String(format: "%.6f", Double(timeNs) / 1e9) + " tid \(tid) cpu \(cpu) \(name) " + fields.joined(separator: " ")
    }
}

/// `vmscope top`: every KVM VM on the host.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "List every KVM VM on the host (KVM's debugfs and /proc): pid, name, vCPUs, exits/s by reason, MMIO/s, hypercalls/s, RSS.",
        discussion: "Needs root (debugfs is mounted read-only if it is not). --once prints one table (or --json) from two samples --interval apart.")

    @Flag(help: "Print once and exit.") var once = false
    @Flag(help: "With --once: JSON instead of a table.") var json = false
    @Option(help: "Seconds between the two samples rates are computed from.") var interval: Double = 1

    func validate() throws {
        guard interval >= 0.1 && interval <= 60 else { throw ValidationError("--interval must be between 0.1 and 60 seconds") }
    }

    func run() throws {
        do throws(TraceError) {
            repeat { try printOnce() } while !once
        } catch {
            var err = StandardError()
            print("vmscope top: \(error)", to: &err)
            throw ExitCode(2)
        }
    }

    private func printOnce() throws(TraceError) {
        let t0 = HostClock.monotonicNs()
        let before = try HostVMs.sample()
        usleep(useconds_t(interval * 1e6))
        let after = try HostVMs.sample()
        let rows = HostVMs.rows(before: before, after: after, intervalNs: HostClock.monotonicNs() - t0)
        print(json ? JSON.object([("vms", .array(rows.map(\.json)))]).serialized : Self.table(rows))
    }

    static func table(_ rows: [HostVMs.Row]) -> String {
        var lines = ["    PID NAME                 VCPUS    EXITS/s     MMIO/s    HCALL/s      RSS  TOP EXITS"]
        for r in rows.sorted(by: { ($0.exitsPerSecond ?? 0) > ($1.exitsPerSecond ?? 0) }) {
            let s = r.sample
            func rate(_ k: String?) -> String { k.flatMap { r.perSecond[$0] }.map { String(format: "%.0f", $0) } ?? "-" }
            let name = s.name.count > 20 ? String(s.name.prefix(19)) + "…" : s.name
            lines.append(String(format: "%7d ", s.pid) + name.padding(toLength: 20, withPad: " ", startingAt: 0)
                + String(format: " %5d ", s.vcpus) + rate(HostVMs.Stat.exits).leftPad(10) + " " + rate(HostVMs.Stat.mmio).leftPad(10) + " "
                + rate(HostVMs.Stat.hypercalls).leftPad(10) + " " + (s.rssBytes.map { Fmt.size($0) } ?? "-").leftPad(8) + "  "
                + r.topExits.map { "\($0.0) \(Int($0.1))" }.joined(separator: ", "))
        }
        if rows.isEmpty { lines.append("(no KVM VMs)") }
        return lines.joined(separator: "\n")
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
