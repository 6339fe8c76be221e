import Foundation
import HostTracing
import Schema
import VMM

/// The trace source: decoding speed from a recorded buffer of real raw records, and what tracing costs a running
/// guest (its heartbeat rate with tracing on against off, same run).
public func traceBenchmarks(_ sizes: BenchSizes, devicePath: String = "/dev/kvm", callgrindExecutable: String? = nil) throws -> [BenchResult] {
    var results: [BenchResult] = []
    var sink = 0
    let count = sizes.repetitions > 10 ? 1_000_000 : 10_000
    do {
        let buffer = try RecordedTraceBuffer(records: count)
        let reps = max(3, sizes.repetitions / 20)
        let ns = median(sample(reps) { _ in sink &+= decodeRecordedBuffer(buffer) })
        results.append(BenchResult(name: "trace-decode-events-per-s", value: Double(count) / (ns / 1e9), unit: "events/s",
                                   target: .atLeast(1_000_000),
                                   note: "a recorded buffer: the \(buffer.distinct) raw records of \(buffer.source) (kernel \(buffer.kernel)), back to back \(count / buffer.distinct)× → TraceEvent, \(count) events, each with the layouts the file carries"))
        var decodeInstr: BenchResult?
        if let exe = callgrindExecutable, let instr = callgrindInstructionsPerRecord(exe, path: "tracepoints", records: callgrindTraceRecords) {
            decodeInstr = BenchResult(name: "trace-decode-instr-per-event", value: instr, unit: "instr",
                                      note: "valgrind --tool=callgrind, decode only (--toggle-collect) after one pass not counted, \(callgrindTraceRecords) events of the same recording")
            results.append(decodeInstr!)
        }
        // `vmscope trace --json`'s work an event: decoded, then written as its JSON line.
        let jsonNs = median(sample(reps) { _ in sink &+= writeRecordedBufferJSON(buffer) })
        let bytes = writeRecordedBufferJSON(buffer)
        results.append(BenchResult(name: "trace-json-events-per-s", value: Double(count) / (jsonNs / 1e9), unit: "events/s",
                                   note: "the same events decoded and written as `vmscope trace --json` writes them (JSONOutput), \(bytes / count) bytes an event, in batches of 1,024"))
        if let exe = callgrindExecutable, let instr = callgrindInstructionsPerRecord(exe, path: "trace-json", records: callgrindTraceRecords) {
            results.append(BenchResult(name: "trace-json-instr-per-event", value: instr, unit: "instr", baseline: decodeInstr,
                                       note: "valgrind --tool=callgrind, decode and JSON writing (--toggle-collect) after one pass not counted, \(callgrindTraceRecords) events of the same recording; 4,997 on 2026-12-07 before JSONOutput (each piece appended to an [UInt8])"))
        }
    } catch {
        results.append(BenchResult(name: "trace-decode-events-per-s", value: .nan, unit: "events/s", note: "skipped: \(error)"))
    }

    // The traced map's and memory faults' pairing on real 7.3 records: decode, TracedAttributes and
    // MemoryFaultPairing, as `vmscope trace` and the trace source run them on each event.
    do {
        let buffer = try RecordedTraceBuffer(records: count, path: conversionsRecordingPath)
        let reps = max(3, sizes.repetitions / 20)
        let ns = median(sample(reps) { _ in sink &+= pairRecordedBuffer(buffer) })
        results.append(BenchResult(name: "trace-pairing-events-per-s", value: Double(count) / (ns / 1e9), unit: "events/s",
                                   target: .atLeast(1_000_000),
                                   note: "the \(buffer.distinct) raw records of \(buffer.source) (kernel \(buffer.kernel): kvm_vm_set_mem_attributes, sys_enter/exit_ioctl, kvm_page_fault, MEMORY_FAULT exits), back to back → decoded, paired into conversions, the traced map, conversion latency, the guest's requests and memory faults, \(count) events"))
        if let exe = callgrindExecutable, let instr = callgrindInstructionsPerRecord(exe, path: "pairing", records: callgrindTraceRecords) {
            results.append(BenchResult(name: "trace-pairing-instr-per-event", value: instr, unit: "instr",
                                       note: "valgrind --tool=callgrind, decode and pairing only (--toggle-collect) after one pass not counted, \(callgrindTraceRecords) events of the same recording"))
        }
        // The same records as `top` and the exporter count and pair them (HostVMs.TracedTally).
        let tallyNs = median(sample(reps) { _ in sink &+= tallyRecordedBuffer(buffer) })
        results.append(BenchResult(name: "trace-top-tally-events-per-s", value: Double(count) / (tallyNs / 1e9), unit: "events/s",
                                   note: "the same \(count) events counted by process and reason and paired into the traced map and each conversion's steps, as `top` and the exporter do (HostVMs.TracedTally); median of \(reps)"))
        if let exe = callgrindExecutable, let instr = callgrindInstructionsPerRecord(exe, path: "top", records: callgrindTraceRecords) {
            results.append(BenchResult(name: "trace-top-tally-instr-per-event", value: instr, unit: "instr",
                                       note: "valgrind --tool=callgrind, decode and tally only (--toggle-collect) after one pass not counted, \(callgrindTraceRecords) events of the same recording; 3,283 on 2026-12-07 before each conversion's steps were kept in three fields (not a dictionary), the map mutated in place (not through an optional) and ConversionLatencyPairing kept one dictionary (not two)"))
        }
    } catch {
        results.append(BenchResult(name: "trace-pairing-events-per-s", value: .nan, unit: "events/s", note: "skipped: \(error)"))
    }

    if sink == 42 { print("") }  // keeps the optimiser from dropping the decode
    // Overhead: the built-in guest's heartbeats per second, untraced and then traced by a TraceSession reading its
    // buffers the way `vmscope trace` does, same VM, same run.
    guard FileManager.default.fileExists(atPath: devicePath), getuid() == 0 else {
        results.append(BenchResult(name: "trace-heartbeat-ratio", value: .nan, unit: "×", note: "skipped: needs root and \(devicePath)"))
        return results
    }
    let seconds = sizes.repetitions > 10 ? 5.0 : 1.0
    let vm = try liveVM(devicePath: devicePath) { _ in }
    defer { vm.stop() }
    func heartbeats() -> UInt64 { vm.vmm.vcpus(withRegisters: false).reduce(0) { $0 + $1.guest.heartbeats } }
    func rate(traced: TraceSession?) -> Double {
        let start = nowNs(), h0 = heartbeats()
        while Double(nowNs() - start) < seconds * 1e9 {
            if let traced { sink &+= traced.read().count }
            usleep(20_000)
        }
        return Double(heartbeats() - h0) / (Double(nowNs() - start) / 1e9)
    }
    usleep(500_000)
    let off = rate(traced: nil)
    let baseline = BenchResult(name: "trace-off-heartbeats-per-s", value: off, unit: "/s",
                               note: "baseline: the built-in guest's heartbeats, 2 vCPUs, no tracing")
    results.append(baseline)
    do {
        let session = try TraceSession(pid: getpid())
        defer { session.close() }
        let on = rate(traced: session)
        results.append(BenchResult(name: "trace-on-heartbeats-per-s", value: on, unit: "/s", target: .atLeast(off * 0.95), baseline: baseline,
                                   note: "the same VM traced (kvm_userspace_exit, kvm_mmio, ... of this process), buffers read every 20 ms; \(session.decoded) events, \(session.missed) dropped"))
    } catch {
        results.append(BenchResult(name: "trace-on-heartbeats-per-s", value: .nan, unit: "/s", note: "skipped: \(error)"))
    }
    return results
}

/// Raw records this project's machines recorded (`vmscope trace PID --save-raw`: the reference VMM's guest during a
/// conversion burst, kernel 6.18 under PVM), kept with the decode tests.
public let traceRecordingPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../Tests/HostTracingTests/Fixtures/kernel-6.18-pvm-vmm-burst.jsonl").standardized.path

/// Raw records of Linux 7.3 in the lab: the conversions and memory faults of vmscope's VMM on the kernel engine.
public let conversionsRecordingPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../Tests/HostTracingTests/Fixtures/kernel-7.3-lab-vmm-conversions.jsonl").standardized.path

/// Decodes and pairs every record of `buffer` as `vmscope trace --paired-only` does (`TracePairing`: the traced map,
/// conversion steps, the guest's requests, memory faults); returns how many records that gave.
@inline(never) public func pairRecordedBuffer(_ buffer: RecordedTraceBuffer) -> Int {
    var pairing = TracePairing(tracesConversions: true, complete: true)
    var paired: [TracePairing.Paired] = []
    var seen = 0
    buffer.forEachEvent { e in
        pairing.apply(e, into: &paired)
        seen &+= paired.count
        paired.removeAll(keepingCapacity: true)
    }
    return seen
}

/// Counts and pairs every record of `buffer` as `top` and the exporter do (`HostVMs.TracedTally`: exits by reason
/// and process, the traced map and each conversion's steps); returns the steps timed.
@inline(never) public func tallyRecordedBuffer(_ buffer: RecordedTraceBuffer) -> Int {
    // Each thread its own process: the recording's thread ids are not this host's.
    let tally = HostVMs.TracedTally(threadGroup: { $0 })
    buffer.forEachEvent { e in tally.take(e, pairs: true) }
    return tally.processesKept.reduce(0) { $0 + tally.takeConversionSteps($1).count }
}

/// Records in the trace callgrind workload.
public let callgrindTraceRecords = 8192

/// `records` raw records from the recording, repeated, back to back in one buffer as a per-CPU buffer page holds
/// them (each after its length), with the layouts the recording carries.
public struct RecordedTraceBuffer: Sendable {
    public let layouts: EventLayouts
    public let kernel: String
    public let source: String
    public let distinct: Int
    public let bytes: [UInt8]

    public init(records: Int, path: String = traceRecordingPath) throws {
        let recording = try RawTraceRecording(contentsOf: path)
        guard !recording.records.isEmpty else { throw TraceError("\(path): no records") }
        layouts = recording.layouts
        kernel = recording.kernel
        source = URL(fileURLWithPath: path).lastPathComponent
        distinct = recording.records.count
        var b: [UInt8] = []
        for i in 0..<records {
            let data = recording.records[i % distinct].data
            withUnsafeBytes(of: UInt32(data.count).littleEndian) { b += $0 }
            b += data
        }
        bytes = b
    }
}

extension RecordedTraceBuffer {
    /// Each record decoded, in order (its time: its index).
    @inline(__always) func forEachEvent(_ body: (TraceEvent) -> Void) {
        bytes.withUnsafeBytes { all in
            var o = 0
            var t: UInt64 = 0
            while o + 4 <= all.count {
                let n = Int(UInt32(littleEndian: all.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
                if let e = layouts.decode(UnsafeRawBufferPointer(rebasing: all[(o + 4)..<(o + 4 + n)]), cpu: 0, timeNs: t) { body(e) }
                o += 4 + n
                t &+= 1
            }
        }
    }
}

/// Decodes every record of `buffer` and writes the events as `vmscope trace --json` does (a JSON object a line, a
/// batch of up to 1,024 at a time, as a read hands them over); returns the bytes written.
@inline(never) public func writeRecordedBufferJSON(_ buffer: RecordedTraceBuffer) -> Int {
    var written = 0
    var batch: [TraceEvent] = []
    batch.reserveCapacity(1024)
    let out = JSONOutput()
    func flush() {
        out.removeAll()
        TraceEvent.writeJSONLines(batch, shownOnly: nil, to: out)
        written &+= out.count
        batch.removeAll(keepingCapacity: true)
    }
    buffer.forEachEvent { e in
        batch.append(e)
        if batch.count == 1024 { flush() }
    }
    flush()
    return written
}

/// Decodes every record of `buffer` (the work `TraceSession.read` does a record); returns the MMIO events seen.
@inline(never) public func decodeRecordedBuffer(_ buffer: RecordedTraceBuffer) -> Int {
    var mmio = 0
    buffer.forEachEvent { e in if case .mmio = e.kind { mmio &+= 1 } }
    return mmio
}
