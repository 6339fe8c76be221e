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
}
