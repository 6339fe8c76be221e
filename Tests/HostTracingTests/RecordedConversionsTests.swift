import Foundation
import KVM
@testable import Schema
import Testing
@testable import HostTracing

/// The traced map and memory faults on real records: `Fixtures/kernel-7.3-lab-vmm-conversions.jsonl` was saved in the
/// lab on Linux 7.3.4 by `vmscope trace --events kvm_vm_set_mem_attributes,kvm_page_fault,kvm_userspace_exit
/// --save-raw FILE --exec -- vmscope vmm --attribute-engine kernel --ram 16M` (the VMM started under the trace, three
/// host conversions through `vmscope ctl` among the engine's own and the guest's), then cut to the records the
/// pairing reads: every sys_enter_ioctl and kvm_vm_set_mem_attributes, the sys_exit_ioctl after each enter on its
/// thread, and every MEMORY_FAULT exit with the kvm_page_fault before it on its thread (the rest, 19,000 page faults
/// and KVM_RUN returns, change no pairing).
@Suite struct RecordedConversionsTests {
    static let recording = try! RawTraceRecording(contentsOf: fixturePath("kernel-7.3-lab-vmm-conversions.jsonl"))

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

extension RecordedConversionsTests {
    /// `top` and the exporter (`HostVMs.TracedTally`) keep the map and the conversions' steps as `vmscope trace`
    /// (`TracePairing`) does: on the same real records, the same steps, the same private pages and the same count of
    /// MEMORY_FAULT exits. The tally skips the map for exits and `KVM_RUN` entries, and keeps each conversion's
    /// steps in three fields: this holds it to the pairing it must not drift from.
    @Test func topsTallyAgreesWithTracesPairingOnTheRecording() throws {
        let events = Self.recording.decoded()
        var pairing = TracePairing(tracesConversions: true, complete: true)
        var paired: [TracePairing.Paired] = []
        for e in events { pairing.apply(e, into: &paired) }
        let traced = paired.compactMap { if case .steps(let t) = $0 { t.stepTimes } else { nil } }
        // One VMM: every thread of the recording is one process's.
        let vmm: Int32 = 4242
        let tally = HostVMs.TracedTally(threadGroup: { _ in vmm })
        for e in events { tally.take(e, pairs: true) }
        let tallied = tally.takeConversionSteps(vmm)
        // 298 conversions; the recording kept no KVM_RUN entry (its filter kept only the conversions' ioctls), so the
        // last of those a vCPU made after an exit still wait for their thread's re-entry.
        #expect(traced.count == 289 && tallied == traced, "\(tallied.count) steps tallied, \(traced.count) traced")
        #expect(tallied.contains { $0[.request] != nil } && tallied.contains { $0[.request] == nil && $0[.convert] != nil },
                "the vCPUs' own conversions (after an exit) and the others (the VMM's start, `ctl`)")
        let map = try #require(pairing.attributes)
        let privatePages = map.runs.filter(\.isPrivate).reduce(0) { $0 + ($1.end - $1.start) }
        #expect(privatePages > 0 && tally.privateBytes(vmm) == privatePages * 4096)
        #expect(tally.userspaceExits(vmm, reason: .memoryFault) == 52)
        #expect(tally.takeConversionSteps(vmm).isEmpty, "taken once")
    }
}
