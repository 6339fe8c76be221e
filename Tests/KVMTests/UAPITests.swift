import CKVM
import Testing
@testable import KVM

/// The hand-written UAPI against the values measured on this project's machines (`kvm-facts.md`).
@Suite struct UAPITests {
    @Test func structSizesMatchTheUAPI() {
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.size == 160)
        #expect(MemoryLayout<ckvm_memory_attributes>.size == 32)
        #expect(MemoryLayout<ckvm_create_guest_memfd>.size == 64)
        #expect(MemoryLayout<kvm_regs>.size == 144)
        #expect(MemoryLayout<kvm_sregs>.size == 312)
        #expect(MemoryLayout<kvm_enable_cap>.size == 104)
        #expect(MemoryLayout<kvm_x86_mce>.size == 64)
        #expect(MemoryLayout<ckvm_run_memory_fault>.size == 24)
    }

    @Test func fieldOffsetsMatchTheUAPI() {
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.offset(of: \.guest_phys_addr) == 8)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.offset(of: \.memory_size) == 16)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.offset(of: \.userspace_addr) == 24)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.offset(of: \.guest_memfd_offset) == 32)
        #expect(MemoryLayout<ckvm_userspace_memory_region2>.offset(of: \.guest_memfd) == 40)
        #expect(MemoryLayout<ckvm_memory_attributes>.offset(of: \.attributes) == 16)
        // kvm_run.hypercall.ret is at 88 of kvm_run, i.e. 56 into the exit union at 32.
        #expect(Int(CKVM_RUN_EXIT_UNION_OFFSET) + MemoryLayout<ckvm_run_hypercall>.offset(of: \.ret)! == 88)
        #expect(Int(CKVM_RUN_EXIT_UNION_OFFSET) + MemoryLayout<ckvm_run_hypercall>.offset(of: \.flags)! == 96)
        #expect(Int(CKVM_RUN_EXIT_UNION_OFFSET) + MemoryLayout<ckvm_run_memory_fault>.offset(of: \.gpa)! == 40)
    }

    @Test(arguments: [
        (KVMIoctl.createVM, 0xAE01), (KVMIoctl.checkExtension, 0xAE03), (KVMIoctl.getVCPUMmapSize, 0xAE04),
        (KVMIoctl.run, 0xAE80), (KVMIoctl.getRegs, 0x8090_AE81), (KVMIoctl.getSregs, 0x8138_AE83),
        (KVMIoctl.enableCap, 0x4068_AEA3), (KVMIoctl.setUserMemoryRegion2, 0x40A0_AE49),
        (KVMIoctl.setMemoryAttributes, 0x4020_AED2), (KVMIoctl.createGuestMemfd, 0xC040_AED4),
        (KVMIoctl.getStatsFD, 0xAECE), (KVMIoctl.getMCECapSupported, 0x8008_AE9D),
        (KVMIoctl.setupMCE, 0x4008_AE9C), (KVMIoctl.setMCE, 0x4040_AE9E), (KVMIoctl.nmi, 0xAE9A),
    ] as [(IoctlRequest, UInt)])
    func ioctlNumbersMatchTheUAPI(request: IoctlRequest, expected: UInt) {
        #expect(request.value == expected, "\(request.name)")
    }

    /// Ioctls whose numbers the 6.1 system headers also define must agree with them.
    @Test func ioctlNumbersAgreeWithSystemHeaders() {
        #expect(KVMIoctl.setRegs.value == 0x4090_AE82)
        #expect(KVMIoctl.setSregs.value == 0x4138_AE84)
        #expect(KVMIoctl.setGuestDebug.value == 0x4048_AE9B)
    }

    @Test func capabilityNumbers() {
        #expect(Capability.userMemory2.rawValue == 231)
        #expect(Capability.memoryFaultInfo.rawValue == 232)
        #expect(Capability.memoryAttributes.rawValue == 233)
        #expect(Capability.guestMemfd.rawValue == 234)
        #expect(Capability.vmTypes.rawValue == 235)
        #expect(Capability.preFaultMemory.rawValue == 236)
        #expect(Capability.guestMemfdFlags.rawValue == 244)
        #expect(Capability.exitHypercall.rawValue == 201)
        #expect(Capability.binaryStatsFD.rawValue == 203)
        #expect(Capability.dirtyLogRing.rawValue == 192)
        // Capabilities old enough to be in the 6.1 headers: the headers' own macros.
        #expect(Capability.nrMemslots.rawValue == UInt(KVM_CAP_NR_MEMSLOTS))
        #expect(Capability.mce.rawValue == UInt(KVM_CAP_MCE))
        #expect(Capability.immediateExit.rawValue == UInt(KVM_CAP_IMMEDIATE_EXIT))
        #expect(Capability.exitHypercall.rawValue == UInt(KVM_CAP_EXIT_HYPERCALL))
        #expect(Capability.binaryStatsFD.rawValue == UInt(KVM_CAP_BINARY_STATS_FD))
    }

    @Test func flagNamesCoverUnknownBits() {
        #expect(MemoryRegionFlags(rawValue: 0b1100).names == ["GUEST_MEMFD", "bit 3"])
        #expect(GuestMemfdFlags(rawValue: 0b1011).names == ["MMAP", "INIT_SHARED", "bit 3"])
    }

    @Test func errorsNameTheOperationAndErrno() {
        let e = KVMError(operation: "KVM_SET_USER_MEMORY_REGION2", errno: .fileExists, context: "slot 2")
        #expect(e.errnoName == "EEXIST")
        #expect(e.description == "KVM_SET_USER_MEMORY_REGION2 (slot 2) failed: EEXIST (File exists)")
    }
}
