import Foundation
import KVM
@testable import Schema
import Testing
@testable import HostTracing

/// Decoding on synthetic records laid out as this kernel's formats say (events/kvm/*/format on 6.18), for every
/// reason and bit the issue names, unknown ones included.
@Suite struct DecodeTests {
    /// The layouts of kernel 6.18 (events/kvm/<event>/format), ids as there.
    static let layouts = EventLayouts.kernel618

    /// A record: common header (type, flags, preempt count, pid) then fields at their offsets.
    static func record(id: UInt16, pid: Int32, _ fields: [(Int, Int, UInt64)], size: Int = 48) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: size)
        func put(_ off: Int, _ n: Int, _ v: UInt64) { for i in 0..<n { b[off + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(0, 2, UInt64(id))
        put(4, 4, UInt64(UInt32(bitPattern: pid)))
        for (o, n, v) in fields { put(o, n, v) }
        return b
    }

    /// The event's id in these layouts.
    static func id(_ event: String) -> UInt16 { UInt16(layouts.events[event]!.id) }

    static func decode(_ b: [UInt8]) -> TraceEvent? { b.withUnsafeBytes { layouts.decode($0, cpu: 1, timeNs: 7) } }

    @Test(arguments: [(UInt32(2), "IO"), (6, "MMIO"), (17, "INTERNAL_ERROR"), (39, "MEMORY_FAULT"), (40, "TDX"), (41, "ARM_SEA"), (77, "EXIT_77")])
    func userspaceExitReasonsAreNamedUpToTheNewestAndUnknownOnesByNumber(reason: UInt32, name: String) throws {
        let e = try #require(Self.decode(Self.record(id: Self.id("kvm_userspace_exit"), pid: 1234, [(8, 4, UInt64(reason)), (12, 4, 0)])))
        #expect(e.tid == 1234 && e.cpu == 1 && e.timeNs == 7)
        guard case .userspaceExit(let r, let errno) = e.kind else { Issue.record("\(e)"); return }
        #expect(r.name == name && errno == 0)
        #expect(e.json["reason-name"] == .string(name))
    }

    @Test func aFailedRunSaysItsErrnoNotAReason() throws {
        let e = try #require(Self.decode(Self.record(id: Self.id("kvm_userspace_exit"), pid: 1, [(8, 4, 2), (12, 4, UInt64(UInt32(bitPattern: -14)))])))
        #expect(e.json["errno"] == .int(-14) && e.json["reason-name"] == nil && e.json["error"] == .string("KVM_RUN failed"))
        // KVM_EXIT_MEMORY_FAULT is KVM_RUN returning -EFAULT by design (api.rst): the exit, with its errno.
        let fault = try #require(Self.decode(Self.record(id: Self.id("kvm_userspace_exit"), pid: 1, [(8, 4, 39), (12, 4, UInt64(UInt32(bitPattern: -14)))])))
        #expect(fault.json["reason-name"] == .string("MEMORY_FAULT") && fault.json["errno"] == .int(-14) && fault.json["error"] == nil)
        let intr = try #require(Self.decode(Self.record(id: Self.id("kvm_userspace_exit"), pid: 1, [(8, 4, 0), (12, 4, UInt64(UInt32(bitPattern: -4)))])))
        #expect(intr.json["error"]?.stringValue?.contains("EINTR") == true)
    }

    @Test func mmioTypesAndFields() throws {
        for (type, word) in [(UInt64(0), "unsatisfied-read"), (1, "read"), (2, "write"), (9, "type-9")] {
            let e = try #require(Self.decode(Self.record(id: Self.id("kvm_mmio"), pid: 5, [(8, 4, type), (12, 4, 4), (16, 8, 0x8010_0000), (24, 8, 0xFFFF_FFFF)])))
            #expect(e.kind == .mmio(TraceEvent.MMIOType(UInt32(type)), length: 4, gpa: 0x8010_0000, value: 0xFFFF_FFFF))
            #expect(e.json["type"] == .string(word))
        }
    }

    @Test func everyPageFaultErrorCodeBitIsNamedAndUnknownOnesShownByNumber() throws {
        for (bit, name) in PageFaultErrorCode.bits {
            let ec = PageFaultErrorCode(rawValue: 1 << UInt64(bit))
            #expect(ec.names == [name], "bit \(bit)")
        }
        let mixed = PageFaultErrorCode(rawValue: 1 << 1 | 1 << 4 | 1 << 49 | 1 << 20 | 1 << 63)
        #expect(mixed.names == ["write", "fetch", "private_access", "bit20", "bit63"])
        #expect(mixed.access == "exec", "fetch wins: an instruction fetch")
        #expect(PageFaultErrorCode(rawValue: 0b10).access == "write" && PageFaultErrorCode(rawValue: 0b1).access == "read")
        let e = try #require(Self.decode(Self.record(id: Self.id("kvm_page_fault"), pid: 9, [(8, 4, 2), (16, 8, 0x1000), (24, 8, 0x2000_0000), (32, 8, 0x2_0000_0006)])))
        guard case .pageFault(2, 0x1000, 0x2000_0000, let code) = e.kind else { Issue.record("\(e)"); return }
        #expect(code.names == ["write", "user", "guest_page"])
        #expect(e.json["access"] == .string("write"))
    }

    @Test func mapGPARangeIsAConversionRequest() throws {
        let toShared = Hypercall(nr: 12, a0: 0x10_0000, a1: 16, a2: 0x20, a3: 0).mapGPARange
        #expect(toShared == .init(gpa: 0x10_0000, pages: 16, pageSize: 4096, toPrivate: false, unknownBits: 0))
        let toPrivate2M = Hypercall(nr: 12, a0: 0x20_0000, a1: 1, a2: 0x11, a3: 0).mapGPARange
        #expect(toPrivate2M?.toPrivate == true && toPrivate2M?.pageSize == 2 << 20)
        let odd = Hypercall(nr: 12, a0: 0, a1: 1, a2: 0x130 | 0x7, a3: 0).mapGPARange
        #expect(odd?.toPrivate == nil && odd?.pageSize == nil && odd?.unknownBits == 0x107, "both directions and a reserved size: nothing guessed")
        #expect(Hypercall(nr: 5, a0: 0, a1: 0, a2: 0, a3: 0).mapGPARange == nil)
        let e = try #require(Self.decode(Self.record(id: Self.id("kvm_hypercall"), pid: 3, [(8, 8, 12), (16, 8, 0x10_0000), (24, 8, 16), (32, 8, 0x20)])))
        #expect(e.json["map-to"] == .string("shared") && e.json["name"] == .string("KVM_HC_MAP_GPA_RANGE"))
    }

    @Test func hardwareExitsSayTheirISAAndReason() throws {
        let e = try #require(Self.decode(Self.record(id: Self.id("kvm_exit"), pid: 4,
            [(8, 4, 0x400), (16, 8, 0xFFF0), (24, 4, 2), (32, 8, 0x1_0000_0014), (40, 8, 0xFFFF_FFF0), (56, 4, 1)], size: 72)))
        #expect(e.kind == .exit(vcpu: 1, isa: 2, reason: 0x400, rip: 0xFFF0, info1: 0x1_0000_0014, info2: 0xFFFF_FFF0))
        #expect(e.json["isa"] == .string("svm") && e.json["event"] == .string("kvm_exit") && e.json["reason-name"] == .string("NPF"))
        for (isa, reason, name) in [(UInt32(2), UInt32(0x7B), "IOIO"), (2, 0x4E, "EXCP_14"), (1, 48, "EPT_VIOLATION"),
                                    (1, 0x8000_0021, "FAILED_ENTRY_INVALID_STATE")] {
            #expect(HardwareExitNames.name(isa: isa, reason: reason) == name)
        }
        let odd = try #require(Self.decode(Self.record(id: Self.id("kvm_exit"), pid: 4, [(8, 4, 0x3FF), (24, 4, 7)], size: 72)))
        #expect(odd.json["isa"] == .string("isa-7") && odd.json["reason"] == .int(0x3FF) && odd.json["reason-name"] == .null,
                "an ISA or reason this vmscope does not know is shown by number, not named")
        #expect(HardwareExitNames.name(isa: 2, reason: 0x3FF) == nil && HardwareExitNames.name(isa: 1, reason: 99) == nil)
    }

    @Test func shortOrForeignRecordsDoNotTrap() {
        #expect(Self.decode([1, 0]) == nil)
        let short = Self.decode(Self.record(id: Self.id("kvm_mmio"), pid: 1, [], size: 10))
        #expect(short?.kind == .mmio(.unsatisfiedRead, length: 0, gpa: 0, value: 0), "fields past the end read as 0")
        #expect(Self.decode(Self.record(id: 999, pid: 1, []))?.kind == .other(id: 999))
    }

    @Test func threadNamesGiveVCPUIndices() {
        #expect(HostProcess.vcpuIndex(threadName: "CPU 3/KVM\n") == 3)
        #expect(HostProcess.vcpuIndex(threadName: "vmscope/vcpu 12") == 12)
        #expect(HostProcess.vcpuIndex(threadName: "qemu-system-x86") == nil)
    }
}
