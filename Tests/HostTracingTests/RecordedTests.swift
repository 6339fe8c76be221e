import Foundation
import KVM
@testable import Schema
import Testing
@testable import HostTracing

/// Decoding on real raw records: `Fixtures/kernel-6.18-pvm-vmm-burst.jsonl` was saved on this project's machine by
/// `vmscope trace PID --save-raw` (vmscope's VMM, 2 vCPUs, three 1 MiB conversions to shared during 4 s; kernel 6.18
/// under PVM, where kvm_userspace_exit and kvm_mmio fire). What the kernel's own event sequence implies must hold of
/// the decoded fields, which it cannot if an offset or a size were wrong.
@Suite struct RecordedTests {
    static let recording = try! RawTraceRecording(contentsOf: fixturePath("kernel-6.18-pvm-vmm-burst.jsonl"))

    @Test func theRecordingCarriesTheLayoutsTheSyntheticTestsUse() {
        #expect(Self.recording.kernel.hasPrefix("6.18"))
        #expect(Self.recording.layouts == EventLayouts.kernel618,
                "EventLayouts.kernel618 must be what the kernel's formats said: \(Self.recording.layouts.events)")
    }

    @Test func everyRecordDecodesFromTheVCPUThreads() throws {
        let events = Self.recording.decoded()
        #expect(events.count == Self.recording.records.count && events.count > 1000)
        #expect(!events.contains { if case .other = $0.kind { true } else { false } }, "every record is a known event")
        // Two vCPU threads, nothing else (the trace was filtered to the VMM's threads; only vCPUs run KVM_RUN).
        #expect(Set(events.map(\.tid)).count == 2)
        // Per CPU, times never go back.
        for cpu in Set(events.map(\.cpu)) {
            let times = events.filter { $0.cpu == cpu }.map(\.timeNs)
            #expect(times == times.sorted(), "cpu \(cpu)")
        }
        // The guest's port I/O heartbeat and its wrong-view touches: IO and MMIO exits, no others, no errors.
        var reasons: [String: Int] = [:]
        for case .userspaceExit(let r, let errno) in events.map(\.kind) {
            #expect(errno == 0)
            reasons[r.name, default: 0] += 1
        }
        #expect(Set(reasons.keys) == ["IO", "MMIO"], "\(reasons)")
    }

    /// KVM's MMIO sequence, per thread: a write is traced, then the exit to the VMM; a read is traced unsatisfied,
    /// then the exit, then traced again with the value the VMM gave, at the same GPA and length.
    @Test func mmioEventsFollowKVMsSequenceAtTheSameAddress() throws {
        let events = Self.recording.decoded()
        var writes = 0, reads = 0
        for tid in Set(events.map(\.tid)) {
            let mine = events.filter { $0.tid == tid }.sorted { $0.timeNs < $1.timeNs }
            var i = 0
            while i < mine.count {
                guard case .mmio(let type, let len, let gpa, _) = mine[i].kind else { i += 1; continue }
                switch type {
                case .write:
                    #expect(i + 1 < mine.count && mine[i + 1].kind == .userspaceExit(reason: .mmio, errno: 0), "tid \(tid) #\(i)")
                    writes += 1
                    i += 2
                case .unsatisfiedRead:
                    guard i + 2 < mine.count else { i = mine.count; continue }  // the recording ended mid-sequence
                    #expect(mine[i + 1].kind == .userspaceExit(reason: .mmio, errno: 0), "tid \(tid) #\(i)")
                    guard case .mmio(.read, len, gpa, _) = mine[i + 2].kind else {
                        Issue.record("tid \(tid) #\(i): \(mine[i + 2].kind) after an unsatisfied read of \(len) at \(gpa)")
                        i += 1
                        continue
                    }
                    #expect([1, 2, 4, 8].contains(len))
                    reads += 1
                    i += 3
                default:
                    Issue.record("tid \(tid) #\(i): a \(type) with no unsatisfied read before it")
                    i += 1
                }
            }
        }
        #expect(writes > 50 && reads > 300, "writes \(writes), reads \(reads)")
    }

    /// A file many chunks long streams in the memory of one chunk and reads as the whole does; a line longer than
    /// the reader takes and a damaged record are refused by line, after the records before them.
    @Test func longFilesStreamAndDamageIsNamedByLine() throws {
        let path = NSTemporaryDirectory() + "vmscope-raw-stream-\(getpid()).jsonl"
        defer { unlink(path) }
        let r = Self.recording
        let copies = 12  // about 3.6 MB: four chunks
        try (RawTraceRecording.headerLine(kernel: r.kernel, layouts: r.layouts)
             + String(repeating: r.records.map(RawTraceRecording.line).joined(), count: copies)).write(toFile: path, atomically: true, encoding: .utf8)
        var batches = 0
        var all: [RawTraceRecord] = []
        let reader = try RawTraceRecording.stream(path: path) { batch, reader in
            #expect(reader.layouts == r.layouts)
            batches += 1
            all += batch
        }
        #expect(all == Array(repeating: r.records, count: copies).flatMap { $0 }, "every record, in order, across chunk boundaries")
        #expect(batches >= 3, "\(batches) batches")
        #expect(reader.line == 1 + r.records.count * copies)
        #expect(try RawTraceRecording(contentsOf: path).records == all)

        // Damage on a late line: the records before it were handed out, then the line is named.
        let damagedLine = 1 + r.records.count * 5 + 7
        var lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        lines[damagedLine - 1] = "{\"cpu\":0,\"time-ns\":1,\"data\":\"not base64!\"}"
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        var before = 0
        #expect { try RawTraceRecording.stream(path: path) { batch, _ in before += batch.count } } throws: {
            "\($0)".contains("line \(damagedLine): a record needs")
        }
        #expect(before > 0 && before < damagedLine - 1, "whole chunks before the damage were handed out: \(before)")

        // A file whose writer was cut short mid-record (no newline after it): the records before it, and the cut
        // said, not damage.
        var text = RawTraceRecording.headerLine(kernel: r.kernel, layouts: r.layouts) + r.records.prefix(10).map(RawTraceRecording.line).joined()
        text += String(RawTraceRecording.line(r.records[10]).prefix(30))
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        var kept: [RawTraceRecord] = []
        let cut = try RawTraceRecording.stream(path: path) { batch, _ in kept += batch }
        #expect(kept == Array(r.records.prefix(10)) && cut.cutShort && cut.line == 12)
        // Damage on the last line with its newline is damage.
        try (text + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        #expect { try RawTraceRecording.stream(path: path) { _, _ in } } throws: { "\($0)".contains("line 12: not JSON") }

        // A line with no end in sight is refused once it passes the limit, not read whole.
        try Data(repeating: UInt8(ascii: "x"), count: RawTraceReader.maxLine + (1 << 20) + 5).write(to: URL(fileURLWithPath: path))
        #expect { try RawTraceRecording.stream(path: path) { _, _ in } } throws: { "\($0)".contains("line 1: longer than 1024 KiB") }
    }

    /// A failed system call keeps its errno beside the words (issue 30: no errno only as a string).
    @Test func aFileThatCannotBeOpenedKeepsItsErrno() {
        do {
            _ = try RawTraceRecording.stream(path: "/nonexistent/vmscope.jsonl") { _, _ in }
            Issue.record("opened a file that is not there")
        } catch {
            #expect(error.errno == .noSuchFileOrDirectory, "\(error)")
            #expect(error.description.contains("cannot open") && error.description.contains("No such file"), "\(error)")
        }
    }

    @Test func savedTextReadsBackTheSame() throws {
        let again = try RawTraceRecording(text: Self.recording.text)
        #expect(again == Self.recording)
    }

    @Test(arguments: [
        ("", "empty"),
        ("{\"format\":\"other\"}", "not a vmscope-raw-trace file"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":2}", "format version 2; this vmscope reads version 1"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,3],\"pid\":[4,4]},\"events\":{}}", "header.type"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[4,4]},\"events\":{\"e\":{\"id\":-1,\"fields\":{}}}}", "event e"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[99999999999,4]},\"events\":{}}", "header.pid"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[4,4]},\"events\":{}}\n{\"cpu\":-1,\"time-ns\":1,\"data\":\"AA==\"}", "line 2"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[4,4]},\"events\":{}}\n{\"cpu\":0,\"time-ns\":1,\"data\":\"!!\"}", "line 2"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[4,4]},\"events\":{}}\nnope", "line 2: not JSON"),
        // Two events with one id (issue 28, class 8): refused by name, never decoded one way or the other.
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[4,4]},\"events\":{\"kvm_mmio\":{\"id\":7,\"fields\":{}},\"kvm_exit\":{\"id\":7,\"fields\":{}}}}",
         "events kvm_mmio and kvm_exit both have id 7"),
        ("{\"format\":\"vmscope-raw-trace\",\"version\":1,\"header\":{\"type\":[0,2],\"pid\":[4,4]},\"events\":{\"kvm_mmio\":{\"id\":7,\"fields\":{}},\"kvm_mmio\":{\"id\":8,\"fields\":{}}}}",
         "duplicate member \"kvm_mmio\""),
    ])
    func damagedFilesAreRefusedByLineAndReason(text: String, says: String) {
        #expect { try RawTraceRecording(text: text) } throws: { "\($0)".contains(says) }
    }

    /// A hostile layout (offsets past the record, odd sizes) decodes without trapping: fields past the end read 0.
    @Test func hostileLayoutsDoNotTrap() throws {
        let text = """
            {"format":"vmscope-raw-trace","version":1,"header":{"type":[65535,2],"pid":[0,8]},"events":{"kvm_mmio":{"id":0,"fields":{"gpa":[65535,8]}}}}
            {"cpu":0,"time-ns":18446744073709551615,"data":"AAAAAAAAAAA="}
            """
        let r = try RawTraceRecording(text: text)
        #expect(r.decoded().isEmpty, "a record shorter than its header is skipped")
        let text2 = text.replacingOccurrences(of: "[65535,2]", with: "[0,2]")
        let e = try RawTraceRecording(text: text2).decoded()
        #expect(e.first?.kind == .mmio(.unsatisfiedRead, length: 0, gpa: 0, value: 0))
    }

    // MARK: kernel 6.12 in the lab (kvm_amd with nested paging): hardware exits and nested page faults

    /// Saved inside the lab by `vmscope trace QEMU-PID --save-raw` while a stock QEMU (`-accel kvm`, 32 MiB, no
    /// devices) ran SeaBIOS for 0.15 s; the first 2000 records kept.
    static let lab = try! RawTraceRecording(contentsOf: fixturePath("kernel-6.12-lab-svm-qemu-boot.jsonl"))

    @Test func theLabsKernelHasLayoutsOfItsOwnWhichTheFileCarries() {
        #expect(Self.lab.kernel.hasPrefix("6.12"))
        #expect(Self.lab.layouts != EventLayouts.kernel618, "6.12's kvm_exit has another id and no requests field")
        #expect(Self.lab.layouts.events["kvm_exit"]?.fields["requests"] == nil)
    }

    /// KVM's nested-page-fault path (svm.c npf_interception): a kvm_exit with SVM's NPF code, whose EXITINFO1 is the
    /// error code and EXITINFO2 the GPA, then kvm_page_fault with that GPA and error code, on the same thread.
    @Test func everyNestedPageFaultFollowsItsExitWithTheSameAddressAndErrorCode() throws {
        let events = Self.lab.decoded()
        #expect(!events.contains { if case .other = $0.kind { true } else { false } })
        var faults = 0
        for tid in Set(events.map(\.tid)) {
            let mine = events.filter { $0.tid == tid }
            for (i, e) in mine.enumerated() {
                guard case .pageFault(_, _, let address, let code) = e.kind else { continue }
                faults += 1
                guard i > 0, case .exit(_, 2, 0x400, _, let info1, let info2) = mine[i - 1].kind else {
                    Issue.record("tid \(tid) #\(i): a page fault not after an NPF exit: \(i > 0 ? "\(mine[i - 1].kind)" : "first")")
                    continue
                }
                #expect(info2 == address && info1 == code.rawValue, "tid \(tid) #\(i)")
                #expect(code.names.contains("guest_final") || code.names.contains("guest_page"), "nested paging: \(code.names)")
                #expect(!code.names.contains { $0.hasPrefix("bit") }, "no bit this vmscope cannot name: \(code.names)")
            }
        }
        #expect(faults > 100, "\(faults) page faults")
    }

    /// Every exit to the VMM for port I/O follows a hardware IOIO exit of the same thread, and every exit's reason
    /// has a name.
    @Test func ioExitsToTheVMMFollowHardwareIOExits() throws {
        let events = Self.lab.decoded()
        var io = 0
        for tid in Set(events.map(\.tid)) {
            let mine = events.filter { $0.tid == tid }
            for (i, e) in mine.enumerated() {
                if case .exit(_, let isa, let reason, _, _, _) = e.kind {
                    #expect(HardwareExitNames.name(isa: isa, reason: reason) != nil, "SVM exit 0x\(String(reason, radix: 16))")
                }
                guard e.kind == .userspaceExit(reason: .io, errno: 0) else { continue }
                io += 1
                guard i > 0, case .exit(_, 2, 0x7B, _, _, _) = mine[i - 1].kind else {
                    Issue.record("tid \(tid) #\(i): an IO exit to the VMM not after an IOIO exit")
                    continue
                }
            }
        }
        #expect(io > 500, "\(io) IO exits")
    }
}

/// A file of `Tests/HostTracingTests/Fixtures`.
func fixturePath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/" + name).path
}
