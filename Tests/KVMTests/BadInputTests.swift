import Glibc
import CKVM
import GuestCode
import Testing
import TestSupport
@testable import KVM

@Suite(.serialized, .enabled(if: kvmPresent, kvmAbsentReason))
struct BadInputTests {
    @Test func overlappingMemslotIsRefusedWithEEXIST() throws {
        let m = try TwoSlotVM(program: RealVMTests.writeBoth)
        let extra = try HostMapping.anonymous(size: 0x2000)
        let error = #expect(throws: KVMError.self) {
            try m.vm.setUserMemoryRegion(MemoryRegion(slot: 2, guestPhysicalAddress: 0x8000, size: 0x2000,
                                                      userspaceAddress: extra.address))
        }
        #expect(error?.operation == "KVM_SET_USER_MEMORY_REGION2")
        #expect(error?.errnoName == "EEXIST")
        #expect(error?.description.contains("File exists") == true)
        // The VM is unchanged: the guest still runs and writes both slots.
        let exit = try m.nextExit()
        #expect(exit.reason == .io)
        #expect(m.low.load32(at: 0x3000) == 0xCAFE_F00D)
    }

    @Test func misalignedSizeIsRefusedWithEINVAL() throws {
        let system = try KVMSystem()
        let vm = try system.createVM()
        let mapping = try HostMapping.anonymous(size: 0x2000)
        let error = #expect(throws: KVMError.self) {
            try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: 0x1001,
                                                    userspaceAddress: mapping.address))
        }
        #expect(error?.operation == "KVM_SET_USER_MEMORY_REGION2")
        #expect(error?.errnoName == "EINVAL")
        #expect(error?.description.contains("Invalid argument") == true)
        #expect(error?.description.contains("size 0x1001") == true)
    }

    @Test func closedVMDescriptorIsRefusedWithEBADF() throws {
        let system = try KVMSystem()
        let vm = try system.createVM()
        let mapping = try HostMapping.anonymous(size: 0x1000)
        vm.close()
        #expect(vm.fd.isClosed)
        let error = #expect(throws: KVMError.self) {
            try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: 0x1000,
                                                    userspaceAddress: mapping.address))
        }
        #expect(error?.errnoName == "EBADF")
        #expect(error?.description.contains("Bad file descriptor") == true)
    }

    /// A VM type whose VM offers guest_memfd (the first such), and the flags it offers; nil where none does.
    static var guestMemfdVM: (type: VMType, flags: GuestMemfdFlags)? {
        guard let caps = HostKVM.capabilities,
              let t = caps.perVMType.first(where: { $0.created && caps.guestMemfd(on: $0.type) }) else { return nil }
        return (t.type, caps.guestMemfdFlags(on: t.type).intersection([.mmap, .initShared]))
    }
    static var noGuestMemfdVM: Comment {
        Comment(rawValue: "no VM type of this kernel (\(HostKVM.kernel)) answers KVM_CAP_GUEST_MEMFD (the same test runs in the lab)")
    }

    @Test(.enabled(if: guestMemfdVM != nil, noGuestMemfdVM))
    func closedGuestMemfdIsRefused() throws {
        let (type, flags) = try #require(Self.guestMemfdVM)
        let system = try KVMSystem()
        let vm = try system.createVM(type: type)
        let gmem = try vm.createGuestMemfd(size: 0x1000, flags: flags)
        let mapping = flags.contains(.mmap) ? try gmem.map() : try HostMapping.anonymous(size: 0x1000)
        // A number far above what the other tests running beside this one open (descriptors are given lowest first;
        // 1000: under the usual limit of 1024):
        // the guest_memfd's own number, closed, was taken again by another test's open in the lab (EINVAL, not EBADF).
        let stale = fcntl(gmem.fd.rawValue, F_DUPFD_CLOEXEC, 1000)
        try #require(stale >= 1000, "the descriptor limit is under 1000")
        close(stale)
        gmem.fd.close()
        let error = #expect(throws: KVMError.self) {
            try vm.setUserMemoryRegion(MemoryRegion(slot: 0, flags: .guestMemfd, guestPhysicalAddress: 0, size: 0x1000,
                                                    userspaceAddress: mapping.address, guestMemfd: stale))
        }
        #expect(error?.operation == "KVM_SET_USER_MEMORY_REGION2")
        #expect(error?.errnoName == "EBADF")
    }

    @Test(.enabled(if: guestMemfdVM != nil, noGuestMemfdVM))
    func guestMemfdWithUnknownFlagIsRefused() throws {
        let (type, _) = try #require(Self.guestMemfdVM)
        let system = try KVMSystem()
        let vm = try system.createVM(type: type)
        let error = #expect(throws: KVMError.self) {
            _ = try vm.createGuestMemfd(size: 0x1000, flags: GuestMemfdFlags(rawValue: 1 << 40))
        }
        #expect(error?.operation == "KVM_CREATE_GUEST_MEMFD")
        #expect(error?.errnoName == "EINVAL")
    }

    /// Where the kernel has no guest_memfd at all (`KVM_CAP_GUEST_MEMFD` 0 on the system fd), the ioctl does not
    /// exist: it is refused with ENOTTY, named, and the VM is unchanged (the VMM then falls back to a memfd).
    @Test(.enabled(if: HostKVM.capabilities.map { !$0.guestMemfd } ?? false,
                   "this kernel answers KVM_CAP_GUEST_MEMFD: the guest_memfd tests above run instead"))
    func guestMemfdIsRefusedWhereTheKernelHasNone() throws {
        let m = try TwoSlotVM(program: RealVMTests.writeBoth)
        #expect(m.slot == .plain)
        let error = #expect(throws: KVMError.self) {
            _ = try m.vm.createGuestMemfd(size: 0x1000, flags: [])
        }
        #expect(error?.operation == "KVM_CREATE_GUEST_MEMFD")
        #expect(error?.errnoName == "ENOTTY")
        #expect(try m.nextExit().reason == .io)
        #expect(m.secondMap.load32(at: 0x10) == 0x5EC2_E700)
    }

    @Test func memoryAttributesAreRefusedWhereTheKernelLacksThem() throws {
        let system = try KVMSystem()
        let vm = try system.createVM()
        try #require(try vm.check(.memoryAttributes) == 0, "this kernel tracks attributes; nothing to refuse")
        let error = #expect(throws: KVMError.self) {
            try vm.setMemoryAttributes(address: 0, size: 0x1000, attributes: .private)
        }
        #expect(error?.operation == "KVM_SET_MEMORY_ATTRIBUTES")
    }
}
