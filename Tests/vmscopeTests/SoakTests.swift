@testable import Schema
import ControlProtocol
import Foundation
import ProcessSupport
import Synchronization
import Testing

/// How long the soak runs: VMSCOPE_SOAK_SECONDS, else 100 s (CI); by hand, e.g. VMSCOPE_SOAK_SECONDS=1800.
let soakSeconds = ProcessInfo.processInfo.environment["VMSCOPE_SOAK_SECONDS"].flatMap(Double.init) ?? 100

/// Open fds and threads of a process (from /proc).
func resources(_ pid: pid_t) -> (fds: Int, threads: Int) {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    let threads = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task").count) ?? -1
    return (fds, threads)
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct SoakTests {
    /// `vmscope vmm` with 4 vCPUs while three clients convert, inject and pause/resume at random and a fourth
    /// never reads; then nothing may be lost or leaked (docs/reliability.md).
    @Test func fourVCPUsThreeMutatorsAndAStuckClient() throws {
        let ramPages = (128 << 20) >> 12
        let socket = NSTemporaryDirectory() + "vmscope-soak-\(getpid()).sock"
        let log = NSTemporaryDirectory() + "vmscope-soak-\(getpid()).log"
        defer { unlink(log) }
        let vmm = try ChildProcess([Binary.url.path, "vmm", "--socket", socket, "--vcpus", "4", "--ram", "128M",
                                    "--allow-mutations", "--allow-fault-injection"], redirects: .init(stderr: log))
        defer { _ = vmm.terminate() }
        var up = false
        for _ in 0..<1000 where !up { up = FileManager.default.fileExists(atPath: socket); if !up { usleep(10_000) } }
        try #require(up, "the VMM did not start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        // The baseline: after one client has come and gone (the server's own first-use allocations done).
        do { let c = try ControlClient(path: socket); _ = try c.execute("query-vm"); c.close() }
        Thread.sleep(forTimeInterval: 0.5)
        let before = resources(vmm.pid)

        // The observer: every event from negotiation on, and the attribute map it started from.
        let observer = try ControlClient(path: socket, eventCapacity: 1 << 20)
        let alias = UInt64(1) << UInt64(try #require(observer.execute("query-vm")["shared-alias"]?.intValue))
        var pages = [Bool](repeating: true, count: ramPages)
        func paint(_ runs: JSON?, into map: inout [Bool]) {
            for r in runs?["runs"]?.arrayValue ?? [] {
                let first = Int((r["gpa"]?.uint64Value ?? 0) >> 12), n = Int((r["size"]?.uint64Value ?? 0) >> 12)
                for p in first..<min(first + n, ramPages) { map[p] = r["private"] == .bool(true) }
            }
        }
        paint(try observer.execute("query-memory-attributes"), into: &pages)

        // The client that never reads.
        let stuck = try LineConnection(path: socket)
        try stuck.send(#"{"execute":"qmp_capabilities"}"#)

        // Three mutators.
        let stop = Atomic<Bool>(false)
        let revoked = Mutex<[(UInt64, UInt64)]>([])
        let counts = Mutex<[String: Int]>([:])
        let failures = Mutex<[String]>([])
        let group = DispatchGroup()
        for m in 0..<3 {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SystemRandomNumberGenerator()
                do {
                    let c = try ControlClient(path: socket, eventCapacity: 1024)
                    defer { c.close() }
                    while !stop.load(ordering: .relaxed) {
                        // From 1 MiB up: below it are the guest's code, stacks and tables, whose destruction
                        // (a conversion discards contents) is the guest's end, not the VMM's fault.
                        let gpa = UInt64.random(in: 256..<UInt64(ramPages - 512), using: &rng) << 12
                        let size = UInt64.random(in: 1...512, using: &rng) << 12
                        let op = Int.random(in: 0..<10, using: &rng)
                        let (name, args): (String, JSON) = switch op {
                        case 0...3: ("set-memory-attributes", .object([("gpa", .u(gpa)), ("size", .u(size)), ("private", .bool(Bool.random()))]))
                        case 4: ("inject-fault", .object([("kind", .string("flip")), ("gpa", .u(gpa)), ("size", .u(size))]))
                        case 5: ("inject-fault", .object([("kind", .string("discard")), ("gpa", .u(gpa)), ("size", .u(size))]))
                        case 6: ("inject-fault", .object([("kind", .string("revoke")), ("gpa", .u(gpa)), ("size", .u(min(size, 16 << 12)))]))
                        case 7: ("inject-fault", .object([("kind", .string("nmi")), ("vcpu", .i(Int.random(in: 0..<4)))]))
                        case 8: ("vcpu-control", .object([("index", .i(Int.random(in: 0..<4))), ("action", .string("pause"))]))
                        default: ("vcpu-control", .object([("index", .i(Int.random(in: 0..<4))), ("action", .string("resume"))]))
                        }
                        do {
                            _ = try c.execute(name, args, timeoutMs: 10_000)
                            if op == 6 { revoked.withLock { $0.append((gpa, min(size, 16 << 12))) } }
                            counts.withLock { $0["\(name)\(op >= 4 && op <= 7 ? ":" + (args["kind"]?.stringValue ?? "") : "")", default: 0] += 1 }
                        } catch {
                            if let e = error as? ControlClientError, case .command = e { counts.withLock { $0["refused", default: 0] += 1 }; continue }
                            throw error
                        }
                        _ = c.drainEvents()
                        usleep(UInt32.random(in: 2_000...30_000))
                    }
                } catch {
                    failures.withLock { $0.append("mutator \(m): \(error)") }
                }
            }.start()
        }

        // Run, reading every event as it comes.
        var events: [JSON] = []
        var batches: [FaultBatch] = []
        let deadline = Date().addingTimeInterval(soakSeconds)
        func read(for seconds: Double) {
            let until = Date().addingTimeInterval(seconds)
            // Reads for the whole time: a quiet moment does not end it (events still in flight come after).
            while Date() < until {
                guard let item = observer.nextItem(timeoutMs: 50) else { continue }
                switch item {
                case .faults(let b): batches.append(b)
                case .json(let j):
                    if j["event"] == .string("MEMORY_FAULT") { batches.append(FaultBatch(data: j["data"])) } else { events.append(j) }
                }
            }
        }
        while Date() < deadline { read(for: 1) }
        stop.store(true, ordering: .relaxed)
        group.wait()
        #expect(failures.withLock { $0 } == [], "a mutator failed")
        // Quiesce: no vCPU runs, nothing changes; then the final state and the events still in flight.
        _ = try observer.execute("vcpu-control", .object([("action", .string("pause"))]), timeoutMs: 10_000)
        read(for: 1)
        let finalRuns = try observer.execute("query-memory-attributes")
        let memslots = try #require(try observer.execute("query-memslots").arrayValue)
        let vcpus = try #require(try observer.execute("query-vcpus").arrayValue)
        read(for: 1.5)
        print("soak \(Int(soakSeconds)) s: \(counts.withLock { $0 }.sorted { $0.key < $1.key }), \(events.count) events, \(batches.reduce(0) { $0 + $1.records.count }) fault records")

        // 1. No seq gap that is not announced in `dropped`; nothing dropped on the observer's own queue.
        #expect(observer.eventsDropped == 0)
        var last: UInt64?
        var faults = 0
        for b in batches where !b.records.isEmpty {
            let seqs = b.records.map(\.seq)
            #expect(zip(seqs, seqs.dropFirst()).allSatisfy { $1 == $0 + 1 }, "a gap inside a batch")
            if let last { #expect(seqs[0] - last - 1 == b.dropped, "after seq \(last) the next batch starts at \(seqs[0]) with dropped \(b.dropped)") }
            last = seqs.last
            faults += seqs.count
        }
        #expect(faults > 100, "the guest faulted (\(faults) records)")
        #expect(!events.contains { $0["event"] == .string("EVENTS_DROPPED") }, "the observer read everything")

        // 2. The attribute map equals the starting map with every MEMORY_ATTRIBUTES_CHANGED applied in order.
        var conversions = 0
        for e in events where e["event"] == .string("MEMORY_ATTRIBUTES_CHANGED") {
            let d = e["data"]
            let first = Int((d?["gpa"]?.uint64Value ?? 0) >> 12), n = Int((d?["size"]?.uint64Value ?? 0) >> 12)
            for p in first..<min(first + n, ramPages) { pages[p] = d?["private"] == .bool(true) }
            conversions += 1
        }
        var actual = [Bool](repeating: true, count: ramPages)
        paint(finalRuns, into: &actual)
        let wrong = (0..<ramPages).filter { pages[$0] != actual[$0] }
        #expect(conversions > 100 && wrong.isEmpty, "\(conversions) conversions replayed; \(wrong.count) pages differ, first at gfn \(wrong.first ?? -1)")

        // 3. The memslot layout matches the runs: each page in at most one slot, in the view of its attribute;
        // a page in none only where a revoke took its mapping away.
        var cover = [Int](repeating: 0, count: ramPages)
        var mismatched: [String] = []
        for s in memslots {
            guard let gpa = s["gpa"]?.uint64Value, let size = s["size"]?.uint64Value, let view = s["view"]?.stringValue else { continue }
            let base = view == "shared" ? gpa & ~alias : gpa
            for p in Int(base >> 12)..<min(Int((base + size) >> 12), ramPages) {
                cover[p] += 1
                if (view == "private") != actual[p] { mismatched.append("gfn \(p) in a \(view) slot is \(actual[p] ? "private" : "shared")") }
            }
        }
        let revokedRanges = revoked.withLock { $0 }
        let uncovered = (0..<ramPages).filter { p in
            cover[p] == 0 && !revokedRanges.contains { UInt64(p) >= $0.0 >> 12 && UInt64(p) < ($0.0 + $0.1) >> 12 }
        }
        #expect(mismatched.isEmpty, "\(mismatched.count) pages in the wrong view: \(mismatched.prefix(3))")
        #expect(!cover.contains { $0 > 1 }, "a page in two memslots")
        #expect(uncovered.isEmpty, "\(uncovered.count) pages in no memslot and never revoked, first gfn \(uncovered.first ?? -1)")

        // 4. No vCPU in error.
        let states = vcpus.map { "\($0["state"]?.stringValue ?? "?") (last exit \($0["last-exit"]?.stringValue ?? "?"))" }
        let vmmLog = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(!states.contains { $0.hasPrefix("error") },
                "\(states); VMM log: \(vmmLog.split(separator: "\n").filter { $0.contains("error") || $0.contains("vCPU") }.suffix(10))")

        // 5. Clients gone, nothing leaked: the VMM's fds and threads are back to where they were.
        observer.close()
        stuck.shutdown()
        var after = resources(vmm.pid)
        for _ in 0..<50 where after.fds != before.fds || after.threads != before.threads {
            Thread.sleep(forTimeInterval: 0.1)
            after = resources(vmm.pid)
        }
        #expect(after.fds == before.fds && after.threads == before.threads, "fds \(before.fds) → \(after.fds), threads \(before.threads) → \(after.threads)")
        #expect(vmm.isRunning)
    }
}
