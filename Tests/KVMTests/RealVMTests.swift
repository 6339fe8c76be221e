import Glibc
import CKVM
import GuestCode
import Testing
import TestSupport
@testable import KVM

/// A two-memslot VM (ordinary + a second slot) with one vCPU in 32-bit flat protected mode. The second slot is what
/// the host's KVM offers, asked with `KVM_CHECK_EXTENSION` (`HostKVM`), never assumed:
/// - a guest_memfd with MMAP|INIT_SHARED on a default VM (Linux 6.18 and later): the guest's stores land in it;
/// - else a guest_memfd on the first VM type that offers one (the lab's 6.12: `KVM_X86_SW_PROTECTED_VM`, no MMAP):
///   its pages start shared, so the guest's stores land in the slot's userspace memory and the file stays unread;
/// - else (no guest_memfd at all) a plain memslot over anonymous memory, as the VMM falls back to a memfd.
final class TwoSlotVM {
    static let lowSize: UInt64 = 0x10000
    static let gmemBase: UInt64 = 0x10_0000
    static let gmemSize: UInt64 = 0x10000
    static let gdt: UInt64 = 0x1000
    static let code: UInt32 = 0x2000

    enum SecondSlot: String {
        case guestMemfdMapped = "guest_memfd (MMAP|INIT_SHARED)"
        case guestMemfdUnmapped = "guest_memfd (not mappable; shared pages in userspace memory)"
        case plain = "plain memslot (no guest_memfd)"
    }

    /// The VM type and second slot this host gives, and why.
    static var plan: (type: VMType, slot: SecondSlot) {
        guard let caps = HostKVM.capabilities else { return (.default, .plain) }
        if HostKVM.mappableGuestMemfd { return (.default, .guestMemfdMapped) }
        if let t = caps.perVMType.first(where: { $0.created && caps.guestMemfd(on: $0.type) }) {
            return (t.type, caps.guestMemfdFlags(on: t.type).isSuperset(of: [.mmap, .initShared]) ? .guestMemfdMapped : .guestMemfdUnmapped)
        }
        return (.default, .plain)
    }

    let system: KVMSystem
    let vm: VirtualMachine
    let low: HostMapping
    let slot: SecondSlot
    let gmem: GuestMemfd?
    /// Where the guest's stores to the second slot land, as the host sees them.
    let secondMap: HostMapping
    let vcpu: VCPU

    init(program: (inout X86Assembler) -> Void) throws {
        let plan = Self.plan
        slot = plan.slot
        system = try KVMSystem()
        vm = try system.createVM(type: plan.type)
        low = try HostMapping.anonymous(size: Int(Self.lowSize))
        try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: Self.lowSize,
                                                userspaceAddress: low.address))
        switch plan.slot {
        case .guestMemfdMapped:
            let g = try vm.createGuestMemfd(size: Self.gmemSize, flags: [.mmap, .initShared])
            gmem = g
            secondMap = try g.map()
        case .guestMemfdUnmapped:
            gmem = try vm.createGuestMemfd(size: Self.gmemSize, flags: [])
            secondMap = try HostMapping.anonymous(size: Int(Self.gmemSize))
        case .plain:
            gmem = nil
            secondMap = try HostMapping.anonymous(size: Int(Self.gmemSize))
        }
        try vm.setUserMemoryRegion(MemoryRegion(slot: 1, flags: gmem == nil ? [] : .guestMemfd, guestPhysicalAddress: Self.gmemBase,
                                                size: Self.gmemSize, userspaceAddress: secondMap.address,
                                                guestMemfd: gmem?.fd.rawValue, guestMemfdOffset: 0))
        low.write(FlatProtectedMode.gdtBytes, at: Int(Self.gdt))
        var asm = X86Assembler(origin: Self.code)
        program(&asm)
        low.write(try asm.assemble(), at: Int(Self.code))

        vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.specialRegisters()
        FlatProtectedMode.configure(&sregs, gdtBase: Self.gdt)
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(FlatProtectedMode.registers(entry: UInt64(Self.code), stack: 0x8000))
    }

    /// Runs until an exit other than `.interrupted`, at most `limit` times.
    func nextExit(limit: Int = 100) throws -> VCPUExit {
        for _ in 0..<limit {
            let exit = try vcpu.run()
            if case .interrupted = exit { continue }
            return exit
        }
        throw KVMError(operation: "KVM_RUN", errno: .interrupted, context: "interrupted \(limit) times")
    }
}

@Suite(.serialized, .enabled(if: kvmPresent, kvmAbsentReason))
struct RealVMTests {
    /// The guest stores one word into each memslot, reports through port 0x10, then halts.
    static func writeBoth(_ a: inout X86Assembler) {
        a.mov(.ecx, 0x3000)
        a.mov(.eax, 0xCAFE_F00D)
        a.store(.eax, to: .ecx)
        a.mov(.ecx, UInt32(TwoSlotVM.gmemBase) + 0x10)
        a.mov(.eax, 0x5EC2_E700)
        a.store(.eax, to: .ecx)
        a.mov(.eax, 0x42)
        a.outAL(port: 0x10)
        a.hlt()
    }

    @Test func guestWritesBothMemslotsThenExitsIOAndHLT() throws {
        let m = try TwoSlotVM(program: Self.writeBoth)
        print("RealVMTests: second memslot: \(m.slot.rawValue) on VM type \(TwoSlotVM.plan.type.rawValue)")
        let first = try m.nextExit()
        guard case .ioOut(let port, let size, let count, let data) = first else {
            Issue.record("expected an IO exit, got \(first.reason.name)")
            return
        }
        #expect(port == 0x10 && size == 1 && count == 1)
        #expect(data.first == 0x42)
        let second = try m.nextExit()
        #expect(second.reason == .hlt, "expected HLT, got \(second.reason.name)")
        #expect(m.low.load32(at: 0x3000) == 0xCAFE_F00D)
        #expect(m.secondMap.load32(at: 0x10) == 0x5EC2_E700, "the store to the \(m.slot.rawValue)")
        // Nothing else was written into the second slot.
        #expect(m.secondMap.load32(at: 0x14) == 0)
        let regs = try m.vcpu.registers()
        #expect(regs.rax == 0x42)
    }

    @Test func vcpuStatisticsCountTheExits() throws {
        let m = try TwoSlotVM(program: Self.writeBoth)
        let stats = try m.vcpu.statistics()
        #expect(stats.id.contains("vcpu"))
        let before = try stats.readScalars()
        #expect(before["exits"] != nil, "no 'exits' statistic among \(stats.descriptors.map(\.name))")
        _ = try m.nextExit()
        _ = try m.nextExit()
        let after = try stats.readScalars()
        let exits = after["exits"] ?? 0
        #expect(exits > 0)
        #expect(exits > before["exits"] ?? 0)
        // The guest halted once; io_exits stays 0 under the software KVM here, so HLT is the one to check.
        #expect((after["halt_exits"] ?? 0) >= 1, "stats: \(after.filter { $0.value != 0 })")
        let vmStats = try m.vm.statistics()
        #expect(!vmStats.descriptors.isEmpty)
    }

    @Test func capabilityProbeMatchesTheKernel() throws {
        let system = try KVMSystem()
        let caps = try KVMCapabilities.probe(system)
        #expect(caps.apiVersion == 12)
        #expect(caps.guestMemfd == (try system.check(.guestMemfd) != 0))
        #expect(caps.memoryAttributes == UInt64(try system.check(.memoryAttributes)))
        #expect(caps.nrMemslots == (try system.check(.nrMemslots)))
        #expect(caps.perVMType.contains { $0.type == .default && $0.created })
    }
}

