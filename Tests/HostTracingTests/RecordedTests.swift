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
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kernel-6.18-pvm-vmm-burst.jsonl").path
    static let recording = try! RawTraceRecording(contentsOf: path)

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
    static let lab = try! RawTraceRecording(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kernel-6.12-lab-svm-qemu-boot.jsonl").path)

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

/// The traced map and memory faults on real records: `Fixtures/kernel-7.3-lab-vmm-conversions.jsonl` was saved in the
/// lab on Linux 7.3.4 by `vmscope trace --events kvm_vm_set_mem_attributes,kvm_page_fault,kvm_userspace_exit
/// --save-raw FILE --exec -- vmscope vmm --attribute-engine kernel --ram 16M` (the VMM started under the trace, three
/// host conversions through `vmscope ctl` among the engine's own and the guest's), then cut to the records the
/// pairing reads: every sys_enter_ioctl and kvm_vm_set_mem_attributes, the sys_exit_ioctl after each enter on its
/// thread, and every MEMORY_FAULT exit with the kvm_page_fault before it on its thread (the rest, 19,000 page faults
/// and KVM_RUN returns, change no pairing).
@Suite struct RecordedConversionsTests {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/kernel-7.3-lab-vmm-conversions.jsonl").path
    static let recording = try! RawTraceRecording(contentsOf: path)

    @Test func sevenThreeTracesEveryConversionWithItsResult() throws {
        #expect(Self.recording.kernel == "7.3.4")
        let set = try #require(Self.recording.layouts.events["kvm_vm_set_mem_attributes"])
        #expect(set.fields["start"] == .init(offset: 8, size: 8) && set.fields["end"] == .init(offset: 16, size: 8) && set.fields["attr"] == .init(offset: 24, size: 8))
        let events = Self.recording.decoded()
        #expect(!events.contains { if case .other = $0.kind { true } else { false } }, "every record is a known event")
        var map = TracedAttributes(complete: true)
        var conversions: [TracedAttributes.Conversion] = []
        for e in events { if let c = map.apply(e) { conversions.append(c) } }
        // Each enter (the kernel filter kept only KVM_SET_MEMORY_ATTRIBUTES) has its tracepoint and its return, in order.
        let enters = events.filter { if case .ioctlEnter(_, let cmd) = $0.kind { cmd == UInt64(KVMIoctl.setMemoryAttributes.value) } else { false } }.count
        #expect(enters == 298 && conversions.count == enters)
        for c in conversions {
            #expect(c.accepted && c.startGFN != nil && c.toPrivate != nil, "\(c)")
            if let a = c.enteredNs, let b = c.tracedNs { #expect(a <= b && b <= c.returnedNs, "\(c)") } else { Issue.record("\(c)") }
        }
        #expect(map.applied == 298 && map.refused == 0)
        // The kernel engine sets its private view PRIVATE once at start, past the guest's image (pages 0-127, shared
        // memory on a kernel engine whose guest_memfd it does not map): 16 MiB = 4096 pages.
        #expect(conversions.first.map { $0.startGFN == 128 && $0.endGFN == 4096 && $0.toPrivate == true } == true, "\(conversions.prefix(2))")
        // Host conversions (ctl) are on the shared alias (gfn | 0x80000): [0x100, 0x110) to shared, and 0x200 to
        // shared. (The one between them, [0x100, 0x102) to private, found the guest had faulted those pages back
        // to private already: the VMM had nothing to ask of KVM.)
        for (a, b, p) in [(UInt64(0x80100), UInt64(0x80110), false), (0x80200, 0x80201, false)] {
            #expect(conversions.contains { $0.startGFN == a && $0.endGFN == b && $0.toPrivate == p }, "[\(String(a, radix: 16)), \(String(b, radix: 16))) to \(p ? "private" : "shared")")
        }
    }

    @Test func everyMemoryFaultExitPairsWithItsPageFaultAndKnowsItsDirection() throws {
        var map = TracedAttributes(complete: true)
        var pairing = MemoryFaultPairing()
        var faults: [TracedMemoryFault] = []
        for e in Self.recording.decoded() {
            _ = map.apply(e)
            if let f = pairing.apply(e, attributes: map) { faults.append(f) }
        }
        #expect(faults.count == 52 && pairing.withoutGPA == 0)
        for f in faults {
            // KVM_RUN returns -EFAULT with a MEMORY_FAULT exit; the page fault came first, on the same thread.
            #expect(f.errno == -14 && f.gpa != nil && (f.pageFaultNs ?? .max) <= f.timeNs, "\(f)")
            // A software-protected VM: the hardware error code has no private_access bit (KVM adds it later), so the
            // direction is the page's traced attribute, known for every page of a map traced from the start.
            #expect(f.errorCode?.has("private_access") == false && f.wantsPrivate != nil, "\(f)")
        }
    }
}
