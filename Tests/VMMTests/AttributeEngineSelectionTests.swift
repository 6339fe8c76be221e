@testable import KVM
import Testing
@testable import VMM

@Suite struct AttributeEngineSelectionTests {
    static func caps(privateOn types: [VMType] = [], offered: [VMType] = [.default]) -> KVMCapabilities {
        KVMCapabilities(
            apiVersion: 12, vmTypesMask: offered.reduce(0) { $0 | 1 << UInt64($1.rawValue) },
            userMemory2: true, guestMemfd: true, guestMemfdFlags: [.mmap, .initShared], memoryAttributes: 0,
            memoryFaultInfo: true, exitHypercallMask: 1 << 12, binaryStatsFD: true, nrMemslots: 32764, maxVCPUs: 1024,
            mceBanks: 32, mcgCapSupported: 0x100_0100, dirtyRingMaxBytes: 0, immediateExit: true, preFaultMemory: false,
            setGuestDebug: true,
            perVMType: offered.map {
                .init(type: $0, created: true, memoryAttributes: types.contains($0) ? MemoryAttributes.private.rawValue : 0,
                      guestMemfdFlags: [.mmap], createErrno: nil)
            })
    }

    @Test func autoPicksVMMWhereNoTypeTracksPrivate() throws {
        let d = try AttributeEngineDecision.decide(.auto, capabilities: Self.caps())
        #expect(d.engine == .vmm)
        #expect(d.vmType == .default)
        #expect(d.reason.contains("KVM_CAP_MEMORY_ATTRIBUTES"))
    }

    @Test func autoPicksKernelOnTheTypeThatTracksPrivate() throws {
        let c = Self.caps(privateOn: [.swProtected], offered: [.default, .swProtected])
        let d = try AttributeEngineDecision.decide(.auto, capabilities: c)
        #expect(d.engine == .kernel)
        #expect(d.vmType == .swProtected)
    }

    @Test func kernelWithoutSupportIsRefusedNamingTheCapability() {
        #expect {
            try AttributeEngineDecision.decide(.kernel, capabilities: Self.caps())
        } throws: { error in
            (error as? EngineUnsupported)?.description.contains("KVM_CAP_MEMORY_ATTRIBUTES") == true
        }
    }

    @Test func kernelWithoutGuestMemfdNamesGuestMemfd() {
        var c = Self.caps(privateOn: [.swProtected], offered: [.default, .swProtected])
        c.guestMemfd = false
        #expect {
            try AttributeEngineDecision.decide(.kernel, capabilities: c)
        } throws: { error in
            (error as? EngineUnsupported)?.description.contains("KVM_CAP_GUEST_MEMFD") == true
        }
    }

    @Test func vmmIsAlwaysAvailable() throws {
        let c = Self.caps(privateOn: [.swProtected], offered: [.default, .swProtected])
        #expect(try AttributeEngineDecision.decide(.vmm, capabilities: c).engine == .vmm)
    }

    @Test func planSaysWhatHappensToEachCapability() {
        let items = CapabilityPlan.items(Self.caps())
        let attr = items.first { $0.capability == "KVM_CAP_MEMORY_ATTRIBUTES" }
        #expect(attr?.consequence.hasPrefix("attribute engine: vmm") == true)
        #expect(items.first { $0.capability == "KVM_CAP_NR_MEMSLOTS" }?.consequence.contains("32764") == true)
    }

    /// The guest's request channel (`--guest-requests`): the hypercall only where KVM forwards KVM_HC_MAP_GPA_RANGE
    /// and the CPU has VT-x or AMD-V (a software KVM, as on PVM, hangs on vmcall), with the vendor's instruction.
    @Test func theGuestAsksByHypercallOnlyWhereItCanWork() throws {
        let forwards = Self.caps()
        var keeps = Self.caps()
        keeps.exitHypercallMask = 0
        #expect(try VMBuilder.requestInstruction(.auto, capabilities: forwards, cpu: .svm) == .vmmcall)
        #expect(try VMBuilder.requestInstruction(.auto, capabilities: forwards, cpu: .vmx) == .vmcall)
        #expect(try VMBuilder.requestInstruction(.auto, capabilities: forwards, cpu: nil) == .doorbell)
        #expect(try VMBuilder.requestInstruction(.auto, capabilities: keeps, cpu: .svm) == .doorbell)
        #expect(try VMBuilder.requestInstruction(.doorbell, capabilities: forwards, cpu: .svm) == .doorbell)
        #expect(try VMBuilder.requestInstruction(.hypercall, capabilities: forwards, cpu: .vmx) == .vmcall)
        for (caps, cpu, why) in [(forwards, HostCPU.Virtualization?.none, "no vmx or svm"), (keeps, .svm, "KVM_CAP_EXIT_HYPERCALL is 0")] {
            do {
                _ = try VMBuilder.requestInstruction(.hypercall, capabilities: caps, cpu: cpu)
                Issue.record("refused: \(why)")
            } catch {
                #expect(error.description.contains(why) && error.description.contains("doorbell"), "\(error.description)")
            }
        }
    }

    @Test func theCPUsExtensionIsReadFromCpuinfosFlags() {
        #expect(HostCPU.virtualization(cpuinfo: "processor\t: 0\nflags\t\t: fpu vme svm lm\n") == .svm)
        #expect(HostCPU.virtualization(cpuinfo: "flags\t\t: fpu vmx\n") == .vmx)
        #expect(HostCPU.virtualization(cpuinfo: "flags\t\t: fpu hypervisor lm\nbugs\t: svm\n") == nil)
    }
}
