import GuestCode
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import KVM

/// Whether this kernel offers `KVM_X86_SW_PROTECTED_VM` with the PRIVATE attribute (the lab's does; this
/// project's machines do not: there `LabTests` runs this suite inside the lab).
let swProtectedOffered: Bool = {
    guard kvmPresent, let system = try? KVMSystem(), let caps = try? KVMCapabilities.probe(system) else { return false }
    return caps.privateMemoryVMType == .swProtected
}()

/// A `KVM_X86_SW_PROTECTED_VM` with a plain low memslot (code, GDT, stack; attribute shared) and one test page at
/// 0x100000 laid out as each case needs; one vCPU in flat protected mode.
final class SWProtectedVM {
    static let testGPA: UInt64 = 0x10_0000
    let vm: VirtualMachine
    let low: HostMapping
    let vcpu: VCPU
    let entry: UInt64 = 0x2000

    /// The guest: `op` on the test page, its value out on port 0x10, halt.
    init(write value: UInt32? = nil) throws {
        let system = try KVMSystem()
        vm = try system.createVM(type: .swProtected)
        low = try HostMapping.anonymous(size: 0x10000)
        try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: 0x10000, userspaceAddress: low.address))
        low.write(FlatProtectedMode.gdtBytes, at: 0x1000)
        var a = X86Assembler(origin: UInt32(entry))
        a.mov(.ecx, UInt32(Self.testGPA))
        if let value {
            a.mov(.eax, value)
            a.store(.eax, to: .ecx)
        }
        a.load(.eax, from: .ecx)
        a.outAL(port: 0x10)
        a.hlt()
        low.write(try a.assemble(), at: Int(entry))
        vcpu = try vm.createVCPU(id: 0)
        try restart()
    }

    func restart() throws(KVMError) {
        var sregs = try vcpu.specialRegisters()
        FlatProtectedMode.configure(&sregs, gdtBase: 0x1000)
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(FlatProtectedMode.registers(entry: entry, stack: 0x8000))
    }

    func setPrivate(_ p: Bool) throws {
        try vm.setMemoryAttributes(address: Self.testGPA, size: 4096, attributes: p ? .private : [])
    }

    /// Runs from the start to the first real exit; the byte the guest read when it got to its `out`.
    func run() throws(KVMError) -> VCPUExit {
        try restart()
        for _ in 0..<100 {
            let e = try vcpu.run()
            if case .interrupted = e { continue }
            return e
        }
        throw KVMError(operation: "KVM_RUN", errno: .interrupted, context: "interrupted 100 times")
    }
}

@Suite(.serialized, .enabled(if: swProtectedOffered, "KVM_X86_SW_PROTECTED_VM is not offered here (LabTests runs this suite inside the lab)"))
struct SWProtectedVMTests {
    /// What the kernel engine's layout relies on: where the attribute names a view without backing, KVM exits.
    @Test func privateAttributeOnAPlainMemslotExitsWithPrivate() throws {
        let m = try SWProtectedVM()
        let page = try HostMapping.anonymous(size: 4096)
        try m.vm.setUserMemoryRegion(MemoryRegion(slot: 1, guestPhysicalAddress: SWProtectedVM.testGPA, size: 4096, userspaceAddress: page.address))
        try m.setPrivate(true)
        let e = try m.run()
        guard case .memoryFault(let f) = e else { Issue.record("expected KVM_EXIT_MEMORY_FAULT, got \(e.reason.name)"); return }
        #expect(f.flags == MemoryFaultExit.flagPrivate && f.gpa == SWProtectedVM.testGPA && f.size == 4096 && f.errno == .badAddress)
    }

    @Test func privateAttributeWithoutAMemslotExitsWithPrivate() throws {
        let m = try SWProtectedVM()
        try m.setPrivate(true)
        let e = try m.run()
        guard case .memoryFault(let f) = e else { Issue.record("expected KVM_EXIT_MEMORY_FAULT, got \(e.reason.name)"); return }
        #expect(f.flags == MemoryFaultExit.flagPrivate && f.gpa == SWProtectedVM.testGPA && f.errno == .badAddress)
    }

    @Test func sharedAttributeWithoutAMemslotIsMMIO() throws {
        let m = try SWProtectedVM()
        let e = try m.run()
        guard case .mmioRead(let address, _) = e else { Issue.record("expected an MMIO read, got \(e.reason.name)"); return }
        #expect(address == SWProtectedVM.testGPA)
    }

    /// docs/attribute-engines.md: on Linux 6.12 a shared access to a guest_memfd memslot whose shared side has no
    /// backing (userspace_addr mapped PROT_NONE) is a bare EFAULT: `KVM_RUN` fails, exit reason not MEMORY_FAULT,
    /// no gpa for the VMM to act on (`kvm_handle_error_pfn` returns -EFAULT unannotated). So the kernel engine
    /// never leaves a view's side unbacked; it leaves the view without a memslot, or the attribute PRIVATE.
    @Test func sharedAccessWithoutSharedBackingIsABareEFAULT() throws {
        let m = try SWProtectedVM()
        let gmem = try m.vm.createGuestMemfd(size: 4096)
        let none = try HostMapping.anonymous(size: 4096)
        #expect(mprotect(none.base, 4096, PROT_NONE) == 0)
        try m.vm.setUserMemoryRegion(MemoryRegion(slot: 1, flags: .guestMemfd, guestPhysicalAddress: SWProtectedVM.testGPA,
                                                  size: 4096, userspaceAddress: none.address, guestMemfd: gmem.fd.rawValue,
                                                  guestMemfdOffset: 0))
        do {
            let e = try m.run()
            Issue.record("expected KVM_RUN to fail, got exit \(e.reason.name)")
        } catch {
            #expect(error.errno == .badAddress, "\(error)")
            #expect(!error.description.contains("MEMORY_FAULT"), "\(error)")
            print("shared access without shared backing: \(error)")
        }
    }

    /// private_mem_conversions_test's semantics on one page: what the guest reads after each step.
    @Test func whatTheGuestSeesAfterEachConversion() throws {
        let writer = try SWProtectedVM(write: 0x5A)
        let shared = try HostMapping.anonymous(size: 4096)
        shared.write([0x33], at: 0)
        let gmem = try writer.vm.createGuestMemfd(size: 4096)
        try writer.vm.setUserMemoryRegion(MemoryRegion(slot: 1, flags: .guestMemfd, guestPhysicalAddress: SWProtectedVM.testGPA,
                                                       size: 4096, userspaceAddress: shared.address, guestMemfd: gmem.fd.rawValue,
                                                       guestMemfdOffset: 0))
        func out(_ e: VCPUExit) -> UInt8? { if case .ioOut(_, _, _, let d) = e { return d.first } else { return nil } }
        // Private: the guest writes 0x5A into guest_memfd; the shared byte stays 0x33.
        try writer.setPrivate(true)
        #expect(out(try writer.run()) == 0x5A)
        #expect(shared.read(at: 0, count: 1) == [0x33])
        // A reader on the same VM: shared shows 0x33, private again (no discard) shows 0x5A, after a punch 0.
        let reader = try SWProtectedVM.reader(of: writer)
        try writer.setPrivate(false)
        #expect(out(try reader.run()) == 0x33)
        try writer.setPrivate(true)
        #expect(out(try reader.run()) == 0x5A)
        try gmem.punchHole(offset: 0, length: 4096)
        #expect(out(try reader.run()) == 0)
    }
}

extension SWProtectedVM {
    /// A second vCPU program on the same VM that only reads the test page.
    static func reader(of m: SWProtectedVM) throws -> SWProtectedVMReader { try SWProtectedVMReader(m) }
}

/// Rewrites the guest at the same entry to read without writing, on `m`'s vCPU.
struct SWProtectedVMReader {
    let m: SWProtectedVM
    init(_ m: SWProtectedVM) throws {
        self.m = m
        var a = X86Assembler(origin: UInt32(m.entry))
        a.mov(.ecx, UInt32(SWProtectedVM.testGPA))
        a.load(.eax, from: .ecx)
        a.outAL(port: 0x10)
        a.hlt()
        m.low.write(try a.assemble(), at: Int(m.entry))
    }
    func run() throws(KVMError) -> VCPUExit { try m.run() }
}
