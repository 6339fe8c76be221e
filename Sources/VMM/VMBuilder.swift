import Foundation
import GuestCode
import KVM
import Schema

/// Brings a VM up from a `VMMConfiguration`: checks it, probes KVM, chooses the attribute engine and the backings,
/// creates the VM, its RAM and its vCPUs, and loads the built-in guest. `ReferenceVMM` runs what it builds.
struct VMBuilder {
    let configuration: VMMConfiguration
    var system: KVMSystem
    var capabilities: KVMCapabilities
    var decision: AttributeEngineDecision
    var vm: VirtualMachine
    var memory: GuestMemory
    var guest: BuiltInGuest
    var vcpus: [VCPU] = []
    /// Whether `KVM_X86_SETUP_MCE` worked on every vCPU, or the errno it failed with; nil without MCE banks.
    var mceSetup: Result<UInt64, KVMError>?
    /// How the built-in guest asks for conversions (`GuestRequestChannel`, resolved).
    var requestInstruction = GuestRequestInstruction.doorbell

    init(_ config: VMMConfiguration) throws(VMMError) {
        configuration = config
        try Self.check(config)
        do {
            system = try KVMSystem(path: config.devicePath)
            capabilities = try KVMCapabilities.probe(system)
        } catch { throw VMMError.kvm(error) }
        guard capabilities.userMemory2 else {
            throw VMMError(.unsupported, "the kernel lacks KVM_CAP_USER_MEMORY2 (Linux 6.8 or later needed)")
        }
        do { decision = try AttributeEngineDecision.decide(config.engine, capabilities: capabilities) }
        catch { throw VMMError(.unsupported, error.description) }
        let bit = config.sharedAliasBit ?? Self.defaultAliasBit(ramSize: config.ramSize)
        guard bit >= 12 && bit < 52 && (UInt64(1) << UInt64(bit)) >= config.ramSize else {
            throw VMMError(.genericError, "the shared-alias bit \(bit) must be at least 12, below 52, and above RAM (2^\(bit) >= \(config.ramSize))")
        }
        do {
            vm = try system.createVM(type: decision.vmType)
            memory = try Self.memory(config, capabilities: capabilities, decision: decision, vm: vm, aliasBit: bit)
        } catch let e as VMMError {
            throw e
        } catch let e as KVMError {
            throw VMMError.kvm(e)
        } catch {
            throw VMMError(.genericError, "\(error)")
        }
        do { guest = try BuiltInGuest() } catch { throw VMMError(.genericError, "built-in guest: \(error)") }

        requestInstruction = try Self.requestInstruction(config.guest.requests, capabilities: capabilities,
                                                         cpu: HostCPU.virtualization())
        if capabilities.mapGPARangeHypercall {
            // Any guest may ask by KVM_HC_MAP_GPA_RANGE once KVM forwards it (HypercallHandler answers); the built-in
            // guest does where `requestInstruction` says.
            do { try vm.enable(.exitHypercall, args: [1 << Hypercall.mapGPARange]) } catch {
                guard requestInstruction == .doorbell else { throw VMMError.kvm(error) }
            }
        }
        for i in 0..<config.vcpus {
            do { vcpus.append(try vm.createVCPU(id: i)) } catch { throw VMMError.kvm(error) }
        }
        if config.runGuest { try loadGuest() }
    }

    /// The guest's request channel: the hypercall needs KVM to forward `KVM_HC_MAP_GPA_RANGE` and a CPU whose
    /// hypercall instruction KVM intercepts (hardware KVM; the software KVM of PVM hangs on it).
    static func requestInstruction(_ asked: GuestRequestChannel, capabilities: KVMCapabilities, cpu: HostCPU.Virtualization?)
        throws(VMMError) -> GuestRequestInstruction
    {
        let instruction: GuestRequestInstruction? = capabilities.mapGPARangeHypercall ? cpu.map { $0 == .svm ? .vmmcall : .vmcall } : nil
        switch asked {
        case .doorbell: return .doorbell
        case .auto: return instruction ?? .doorbell
        case .hypercall:
            guard capabilities.mapGPARangeHypercall else {
                throw VMMError(.unsupported, "guest requests by hypercall need KVM to forward KVM_HC_MAP_GPA_RANGE (KVM_CAP_EXIT_HYPERCALL is \(capabilities.exitHypercallMask)); use the doorbell")
            }
            guard let instruction else {
                throw VMMError(.unsupported, "guest requests by hypercall need a hardware KVM (no vmx or svm in /proc/cpuinfo: a software KVM does not run vmcall); use the doorbell")
            }
            return instruction
        }
    }

    /// The configuration's own consistency, before KVM is touched. Messages name the configuration's fields as
    /// `vmscope vmm`'s options spell them.
    static func check(_ config: VMMConfiguration) throws(VMMError) {
        guard config.vcpus >= 1 && config.vcpus <= GuestLayout.maxVCPUs else {
            throw VMMError(.genericError, "vcpus must be between 1 and \(GuestLayout.maxVCPUs), not \(config.vcpus)")
        }
        guard config.ramSize % AttributeMap.pageSize == 0 && config.ramSize > 0 else {
            throw VMMError(.genericError, "ram must be a non-zero multiple of 4 KiB, not \(config.ramSize)")
        }
        let g = config.guest
        guard g.stride >= 4 && 4096 % g.stride == 0 && g.workingSetPages >= 1 else {
            throw VMMError(.genericError, "guest stride must divide 4096 and the working set be at least one page")
        }
        guard !g.selftest || g.workingSetPages >= SelftestPhase.regionPages else {
            throw VMMError(.genericError, "the selftest needs working sets of at least \(SelftestPhase.regionPages) pages")
        }
        if config.runGuest {
            let needed = GuestLayout.ramNeeded(vcpus: config.vcpus, pages: g.workingSetPages)
            guard config.ramSize >= needed else {
                throw VMMError(.genericError, "ram \(config.ramSize) is too small for \(config.vcpus) vCPUs of the built-in guest: it needs \(needed) bytes")
            }
        }
    }

    static func defaultAliasBit(ramSize: UInt64) -> Int {
        if ramSize <= 1 << 31 { return 31 }
        var bit = 32
        while (UInt64(1) << UInt64(bit)) < ramSize { bit += 1 }
        return bit
    }

    /// The engine and both backings, and the RAM laid out over them.
    private static func memory(_ config: VMMConfiguration, capabilities caps: KVMCapabilities,
                               decision chosen: AttributeEngineDecision, vm: VirtualMachine, aliasBit bit: Int) throws -> GuestMemory {
        // The kernel engine never maps guest_memfd (private memory stays out of the host's reach, as on a
        // confidential VM), so the guest's image lives in shared memory the VMM can write. On the vmm engine the image
        // is private and refuses a conversion that would erase it.
        let imagePages: Range<UInt64>? = config.runGuest ? 0..<(UInt64(GuestLayout.bounceBuffers) / AttributeMap.pageSize) : nil
        let engine: any AttributeEngine = switch chosen.engine {
        case .kernel: KernelEngine(sharedAliasBit: bit, imagePages: imagePages)
        case .vmm: VMMEnforcedEngine(sharedAliasBit: bit, imagePages: imagePages)
        }
        let privateBacking: RAMBacking
        // The VM's own answer: Linux 6.12 offers guest_memfd on the system fd but not on a type-0 VM.
        if caps.guestMemfd(on: chosen.vmType) {
            // The vmm engine maps guest_memfd to read private memory (INIT_SHARED where offered so it can); the kernel
            // engine does not.
            let flags = chosen.engine == .kernel ? [] : caps.guestMemfdFlags(on: chosen.vmType).intersection([.mmap, .initShared])
            privateBacking = try RAMBacking(guestMemfd: try vm.createGuestMemfd(size: config.ramSize, flags: flags))
        } else if chosen.engine == .vmm {
            privateBacking = try RAMBacking(memoryFile: MemoryFile(name: "\(config.name)-private", size: config.ramSize))
        } else {
            throw VMMError(.unsupported, "the kernel engine needs KVM_CAP_GUEST_MEMFD")
        }
        let sharedBacking = try RAMBacking(memoryFile: MemoryFile(name: "\(config.name)-shared", size: config.ramSize))
        let limit = min(caps.nrMemslots, config.memslotLimit ?? Int.max)
        return try GuestMemory(vm: vm, ramSize: config.ramSize, engine: engine, privateBacking: privateBacking,
                               sharedBacking: sharedBacking, memslotLimit: limit,
                               pinnedBoundaries: config.runGuest ? [UInt64(GuestLayout.bounceBuffers) / 4096,
                                                                    UInt64(GuestLayout.workingSets) / 4096] : [],
                               memslotSpan: config.memslotSpan,
                               initiallyShared: chosen.engine == .kernel ? imagePages : nil)
    }

    /// Writes the guest image and parameter blocks into RAM and sets each vCPU's registers.
    private mutating func loadGuest() throws(VMMError) {
        guard let ram = memory.currentMapping(gfn: 0) else {
            throw VMMError(.unsupported, "cannot load the built-in guest: \(GuestMemory.privateUnmappable)")
        }
        ram.write(FlatProtectedMode.gdtBytes, at: Int(GuestLayout.gdt))
        ram.write(guest.idt, at: Int(GuestLayout.idt))
        ram.write(guest.code, at: Int(guest.origin))
        let g = configuration.guest
        let alias = memory.engine.sharedAlias.flatMap { $0 < 1 << 32 ? UInt32($0) : nil } ?? 0
        let banks = UInt64(min(capabilities.mceBanks, 32))
        for (index, vcpu) in vcpus.enumerated() {
            let block = Int(GuestLayout.parameterBlock(index))
            func put(_ field: Int32, _ v: UInt32) { ram.store32(v, at: block + Int(field)) }
            put(ParameterBlock.vcpu, UInt32(index))
            put(ParameterBlock.workingSetBase, GuestLayout.workingSet(index, pages: g.workingSetPages))
            put(ParameterBlock.workingSetPages, UInt32(g.workingSetPages))
            put(ParameterBlock.bounceBuffer, GuestLayout.bounceBuffer(index))
            put(ParameterBlock.sharedAlias, alias)
            put(ParameterBlock.convertEvery, UInt32(g.convertEvery))
            put(ParameterBlock.wrongViewEvery, UInt32(g.wrongViewEvery))
            put(ParameterBlock.stride, UInt32(g.stride))
            put(ParameterBlock.mode, g.selftest ? 1 : 0)
            put(ParameterBlock.hypercall, requestInstruction.rawValue)
            do {
                var sregs = try vcpu.specialRegisters()
                FlatProtectedMode.configure(&sregs, gdtBase: UInt64(GuestLayout.gdt), idtBase: UInt64(GuestLayout.idt),
                                            idtLimit: GuestLayout.idtLimit, cr4: FlatProtectedMode.cr4MCE)
                try vcpu.setSpecialRegisters(sregs)
                var regs = FlatProtectedMode.registers(entry: UInt64(guest.entry), stack: UInt64(GuestLayout.stackTop(index)))
                regs.rsi = UInt64(GuestLayout.parameterBlock(index))
                try vcpu.setRegisters(regs)
            } catch { throw VMMError.kvm(error) }
            if banks > 0 {
                let cap = ((capabilities.mcgCapSupported ?? 0) & ~0xFF) | banks
                do { try vcpu.setupMCE(mcgCap: cap); mceSetup = .success(cap) } catch { mceSetup = .failure(error) }
            }
        }
    }
}
