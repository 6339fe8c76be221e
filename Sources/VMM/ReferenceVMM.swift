import CKVM
import Foundation
import GuestCode
import KVM
import Logging
import Schema
import Synchronization

/// What `captureState` returns: one consistent cut of the memory layout and the fault ring.
public struct StateCapture: Sendable {
    public var memslots: [MemslotInfo]
    public var attributes: AttributeRuns
    public var faults: [FaultRecord]
    public var faultsTotal: UInt64
    public var faultsDropped: UInt64
}

/// The reference VMM: one VM on real KVM running the built-in guest, with the API the control server calls.
public final class ReferenceVMM: @unchecked Sendable {
    // @unchecked: the mutable parts are the runners (their own locks), `memory` (its lock) and `policy`.
    public let configuration: VMMConfiguration
    public let capabilities: KVMCapabilities
    public let decision: AttributeEngineDecision
    public let system: KVMSystem
    public let vm: VirtualMachine
    public let memory: GuestMemory
    public let faults: FaultRing
    /// Memory-fault exits, conversions and injections counted for exporters (`query-metrics`).
    public let counters = VMMCounters()
    /// What recording each recent vmm-engine fault cost its vCPU thread, in ns, conversion excluded: from the
    /// exit handler's start to the record in the ring (lock wait, classification, record, ring append).
    private let faultEmitCost = SequencedRing<UInt64>(capacity: 4096)
    public let events: EventLog
    public let guest: BuiltInGuest
    let logger: Logger
    private(set) var runners: [VCPURunner] = []
    private let policyState: Mutex<FaultPolicy>
    private let selftestHookState = Mutex<(@Sendable (SelftestSync) -> Void)?>(nil)

    /// Called on the vCPU thread at each `GuestPort.selftestSync` of the conversion selftest; the vCPU waits
    /// until it returns. Set before `start()`; for tests (the host side of the selftest).
    public var selftestHook: (@Sendable (SelftestSync) -> Void)? {
        get { selftestHookState.withLock { $0 } }
        set { selftestHookState.withLock { $0 = newValue } }
    }
    /// Whether `KVM_X86_SETUP_MCE` worked, or the errno it failed with.
    public private(set) var mceSetup: Result<UInt64, KVMError>?

    public var faultPolicy: FaultPolicy { policyState.withLock { $0 } }
    public var vcpuCount: Int { runners.count }
    public var engineKind: AttributeEngineKind { memory.engine.kind }
    public var sharedAlias: UInt64? { memory.engine.sharedAlias }

    public init(_ config: VMMConfiguration, logger: Logger = Logger(label: "vmscope.vmm")) throws(VMMError) {
        self.configuration = config
        self.logger = logger
        guard config.vcpus >= 1 && config.vcpus <= GuestLayout.maxVCPUs else {
            throw VMMError(.genericError, "--vcpus must be between 1 and \(GuestLayout.maxVCPUs), not \(config.vcpus)")
        }
        guard config.ramSize % AttributeMap.pageSize == 0 && config.ramSize > 0 else {
            throw VMMError(.genericError, "--ram must be a non-zero multiple of 4 KiB, not \(config.ramSize)")
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
                throw VMMError(.genericError, "--ram \(config.ramSize) is too small for \(config.vcpus) vCPUs of the built-in guest: it needs \(needed) bytes")
            }
        }
        do {
            system = try KVMSystem(path: config.devicePath)
            capabilities = try KVMCapabilities.probe(system)
        } catch { throw VMMError.kvm(error) }
        guard capabilities.userMemory2 else {
            throw VMMError(.unsupported, "the kernel lacks KVM_CAP_USER_MEMORY2 (Linux 6.8 or later needed)")
        }
        do { decision = try AttributeEngineDecision.decide(config.engine, capabilities: capabilities) }
        catch { throw VMMError(.unsupported, error.description) }

        let engine: any AttributeEngine
        let bit = config.sharedAliasBit ?? Self.defaultAliasBit(ramSize: config.ramSize)
        guard bit >= 12 && bit < 52 && (UInt64(1) << UInt64(bit)) >= config.ramSize else {
            throw VMMError(.genericError, "--shared-alias-bit \(bit) must be at least 12, below 52, and above RAM (2^\(bit) >= \(config.ramSize))")
        }
        // The kernel engine never maps guest_memfd (private memory stays out of the host's reach, as on a
        // confidential VM), so the guest's image lives in shared memory the VMM can write.
        let imagePages: Range<UInt64>? = config.runGuest ? 0..<(UInt64(GuestLayout.bounceBuffers) / AttributeMap.pageSize) : nil
        switch decision.engine {
        case .kernel:
            engine = KernelEngine(sharedAliasBit: bit, imagePages: imagePages)
        case .vmm:
            engine = VMMEnforcedEngine(sharedAliasBit: bit, imagePages: imagePages)
        }

        do {
            vm = try system.createVM(type: decision.vmType)
            let privateBacking: RAMBacking
            let caps = capabilities, chosen = decision
            // The VM's own answer: Linux 6.12 offers guest_memfd on the system fd but not on a type-0 VM.
            if caps.guestMemfd(on: chosen.vmType) {
                // The vmm engine maps guest_memfd to read private memory (INIT_SHARED where offered so it can);
                // the kernel engine does not.
                let flags = chosen.engine == .kernel ? [] : caps.guestMemfdFlags(on: chosen.vmType).intersection([.mmap, .initShared])
                privateBacking = try RAMBacking(guestMemfd: try vm.createGuestMemfd(size: config.ramSize, flags: flags))
            } else if decision.engine == .vmm {
                privateBacking = try RAMBacking(memoryFile: MemoryFile(name: "\(config.name)-private", size: config.ramSize))
            } else {
                throw VMMError(.unsupported, "the kernel engine needs KVM_CAP_GUEST_MEMFD")
            }
            let sharedBacking = try RAMBacking(memoryFile: MemoryFile(name: "\(config.name)-shared", size: config.ramSize))
            let limit = min(capabilities.nrMemslots, config.memslotLimit ?? Int.max)
            memory = try GuestMemory(vm: vm, ramSize: config.ramSize, engine: engine, privateBacking: privateBacking,
                                     sharedBacking: sharedBacking, memslotLimit: limit,
                                     pinnedBoundaries: config.runGuest ? [UInt64(GuestLayout.bounceBuffers) / 4096,
                                                                          UInt64(GuestLayout.workingSets) / 4096] : [],
                                     memslotSpan: config.memslotSpan,
                                     initiallyShared: decision.engine == .kernel ? imagePages : nil)
        } catch let e as VMMError {
            throw e
        } catch let e as KVMError {
            throw VMMError.kvm(e)
        } catch {
            throw VMMError(.genericError, "\(error)")
        }
        faults = FaultRing(capacity: config.faultRingCapacity, counters: counters)
        events = EventLog(capacity: config.eventLogCapacity)
        policyState = Mutex(config.faultPolicy)
        do { guest = try BuiltInGuest() } catch { throw VMMError(.genericError, "built-in guest: \(error)") }

        if decision.engine == .vmm && capabilities.mapGPARangeHypercall {
            // Hosts where vmcall works can use KVM_HC_MAP_GPA_RANGE too; the built-in guest uses the doorbell.
            try? vm.enable(.exitHypercall, args: [1 << Hypercall.mapGPARange])
        }
        for i in 0..<config.vcpus {
            let vcpu: VCPU
            do { vcpu = try vm.createVCPU(id: i) } catch { throw VMMError.kvm(error) }
            runners.append(VCPURunner(index: i, vcpu: vcpu, vmm: self))
        }
        if config.runGuest { try loadGuest() }
        logger.info("VM ready", metadata: [
            "name": "\(config.name)", "vcpus": "\(config.vcpus)", "ram": "\(config.ramSize)",
            "engine": "\(decision.engine.rawValue)", "reason": "\(decision.reason)",
            "memslots": "\(memory.memslotCount)", "alias": "\(sharedAlias.map { hex($0) } ?? "none")",
        ])
    }

    static func defaultAliasBit(ramSize: UInt64) -> Int {
        if ramSize <= 1 << 31 { return 31 }
        var bit = 32
        while (UInt64(1) << UInt64(bit)) < ramSize { bit += 1 }
        return bit
    }

    /// Writes the guest image and parameter blocks into private RAM and sets each vCPU's registers.
    private func loadGuest() throws(VMMError) {
        guard let ram = memory.currentMapping(gfn: 0) else {
            throw VMMError(.unsupported, "cannot load the built-in guest: \(GuestMemory.privateUnmappable)")
        }
        ram.write(FlatProtectedMode.gdtBytes, at: Int(GuestLayout.gdt))
        ram.write(guest.idt, at: Int(GuestLayout.idt))
        ram.write(guest.code, at: Int(guest.origin))
        let g = configuration.guest
        let alias = sharedAlias.flatMap { $0 < 1 << 32 ? UInt32($0) : nil } ?? 0
        let banks = UInt64(min(capabilities.mceBanks, 32))
        for r in runners {
            let block = Int(GuestLayout.parameterBlock(r.index))
            func put(_ field: Int32, _ v: UInt32) { ram.store32(v, at: block + Int(field)) }
            put(ParameterBlock.vcpu, UInt32(r.index))
            put(ParameterBlock.workingSetBase, GuestLayout.workingSet(r.index, pages: g.workingSetPages))
            put(ParameterBlock.workingSetPages, UInt32(g.workingSetPages))
            put(ParameterBlock.bounceBuffer, GuestLayout.bounceBuffer(r.index))
            put(ParameterBlock.sharedAlias, alias)
            put(ParameterBlock.convertEvery, UInt32(g.convertEvery))
            put(ParameterBlock.wrongViewEvery, UInt32(g.wrongViewEvery))
            put(ParameterBlock.stride, UInt32(g.stride))
            put(ParameterBlock.mode, g.selftest ? 1 : 0)
            do {
                var sregs = try r.vcpu.specialRegisters()
                FlatProtectedMode.configure(&sregs, gdtBase: UInt64(GuestLayout.gdt), idtBase: UInt64(GuestLayout.idt),
                                            idtLimit: GuestLayout.idtLimit, cr4: FlatProtectedMode.cr4MCE)
                try r.vcpu.setSpecialRegisters(sregs)
                var regs = FlatProtectedMode.registers(entry: UInt64(guest.entry),
                                                       stack: UInt64(GuestLayout.stackTop(r.index)))
                regs.rsi = UInt64(GuestLayout.parameterBlock(r.index))
                try r.vcpu.setRegisters(regs)
            } catch { throw VMMError.kvm(error) }
            if banks > 0 {
                let cap = ((capabilities.mcgCapSupported ?? 0) & ~0xFF) | banks
                do { try r.vcpu.setupMCE(mcgCap: cap); mceSetup = .success(cap) } catch { mceSetup = .failure(error) }
            }
        }
    }

    // MARK: Life cycle

    /// Starts one thread per vCPU, running.
    public func start() {
        for r in runners { r.start(); r.requestResume() }
    }

    /// Stops and joins every vCPU thread.
    public func stop() {
        for r in runners { r.stopAndJoin() }
        logger.info("vCPU threads joined")
    }

    // MARK: Permission

    private func requireMutations(_ command: CommandName) throws(VMMError) {
        guard configuration.allowMutations else {
            throw VMMError(.permissionDenied, "\(command.rawValue) needs the VMM started with --allow-mutations")
        }
    }

    // MARK: Memory API

    public func queryMemoryAttributes(gpa: UInt64? = nil, size: UInt64? = nil) throws(VMMError) -> AttributeRuns {
        memory.lock.lock(); defer { memory.lock.unlock() }
        let start = gpa ?? 0
        // Without a size: up to the end of RAM; a start past RAM is refused by name, not subtracted from it.
        guard size != nil || start < memory.ramSize else {
            throw VMMError(.invalidRange, "gpa \(hex(start)) is outside RAM [0, \(hex(memory.ramSize)))")
        }
        return attributes(pages: try memory.pages(gpa: start, size: size ?? memory.ramSize - start))
    }

    /// Runs and byte counts of `pages`; the caller holds `memory.lock`.
    private func attributes(pages: Range<UInt64>) -> AttributeRuns {
        let counts = memory.attributes.pageCounts(pages: pages)
        return AttributeRuns(runs: memory.attributes.runs(pages: pages), privateBytes: counts.private * 4096,
                              sharedBytes: counts.shared * 4096)
    }

    /// `query-metrics`: counters since start, gauges now, conversion times numbered after `conversionTimesAfter`.
    public func metrics(conversionTimesAfter: UInt64?) -> VMMetrics {
        let (bytes, runs, slots): ((private: UInt64, shared: UInt64), Int, Int) = {
            memory.lock.lock(); defer { memory.lock.unlock() }
            return (memory.attributes.pageCounts(pages: 0..<(memory.ramSize / 4096)), memory.attributes.runCount, memory.memslots.count)
        }()
        let c = counters.snapshot()
        let vcpus = vcpus(withRegisters: false).map { v in
            VMMetrics.VCPU(index: v.index, state: .known(v.state), exits: v.exitCounts.sorted { $0.key < $1.key },
                           stats: v.statistics.sorted { $0.key < $1.key })
        }
        return VMMetrics(vcpus: vcpus, memoryFaultExits: c.faultExits, conversions: c.conversions, injections: c.injections,
                         faultsDropped: faults.dropped, privateBytes: bytes.private * 4096, sharedBytes: bytes.shared * 4096,
                         attributeRuns: UInt64(runs), memslots: UInt64(slots),
                         conversionTimes: counters.conversionTimes(after: conversionTimesAfter))
    }

    public var memslots: [MemslotInfo] {
        memory.lock.lock(); defer { memory.lock.unlock() }
        return memory.memslots
    }

    /// Memslots, the attribute runs of all RAM and the newest fault records as of one instant (`query-snapshot`):
    /// taken under the lock every conversion, remap and fault record takes, so the three agree.
    public func captureState(faultLimit: Int) -> StateCapture {
        memory.lock.lock(); defer { memory.lock.unlock() }
        return StateCapture(
            memslots: memory.memslots, attributes: attributes(pages: 0..<(memory.ramSize / 4096)),
            faults: faults.recent(faultLimit), faultsTotal: faults.total, faultsDropped: faults.dropped)
    }

    /// `set-memory-attributes`: a conversion the operator asked for.
    public func setMemoryAttributes(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool = true)
        throws(VMMError) -> ConversionResult
    {
        try requireMutations(.setMemoryAttributes)
        return try convert(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard, cause: .command, vcpu: nil)
    }

    func convert(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool, cause: ConversionCause, vcpu: Int?)
        throws(VMMError) -> ConversionResult
    {
        memory.lock.lock()
        let result: ConversionResult
        do { result = try countedConvert(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard, cause: cause) } catch {
            memory.lock.unlock()
            throw error
        }
        logEvents(conversionEvents(result, gpa: gpa, size: size, toPrivate: toPrivate, cause: cause, vcpu: vcpu))
        memory.lock.unlock()
        return result
    }

    /// `read-memory`: bytes of RAM through one view, or (`privateView` nil, `auto`) each page through its own
    /// current attribute, so a read across a private|shared boundary gives what reading each page alone gives.
    /// `views` lists the runs read through each view, in order.
    public func readMemory(gpa: UInt64, size: UInt64, privateView: Bool?) throws(VMMError)
        -> (bytes: [UInt8], views: [(offset: UInt64, size: UInt64, isPrivate: Bool)]) {
        guard configuration.allowMemoryReads else {
            throw VMMError(.permissionDenied, "read-memory is refused: the VMM was started with --read-only (guest memory stays private)")
        }
        guard size > 0 && size <= 64 << 10 else { throw VMMError(.invalidRange, "size must be 1 to 65536 bytes") }
        memory.lock.lock(); defer { memory.lock.unlock() }
        let (end, overflow) = gpa.addingReportingOverflow(size)
        guard !overflow && end <= memory.ramSize else {
            throw VMMError(.invalidRange, "[\(hex(gpa)), +\(size)) is outside RAM")
        }
        var views: [(offset: UInt64, size: UInt64, isPrivate: Bool)] = []
        var at = gpa
        while at < end {
            let pageEnd = min(end, (at / 4096 + 1) * 4096)
            let isPrivate = privateView ?? memory.attributes.isPrivate(gfn: at / 4096)
            if let last = views.last, last.isPrivate == isPrivate {
                views[views.count - 1].size += pageEnd - at
            } else {
                views.append((at - gpa, pageEnd - at, isPrivate))
            }
            at = pageEnd
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(size))
        for v in views {
            guard let p = memory.hostPointer(ramOffset: gpa + v.offset, privateView: v.isPrivate) else {
                throw VMMError(.unsupported, "read-memory \(hex(gpa + v.offset)) through the private view: \(GuestMemory.privateUnmappable)")
            }
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: Int(v.size)))
        }
        return (bytes, views)
    }

    // MARK: vCPUs

    /// The recent per-fault recording costs (see `faultEmitCost`), oldest first: the benchmark's
    /// `vmm-fault-emit-ns`.
    public func recentFaultEmitCosts() -> [UInt64] { faultEmitCost.recent(faultEmitCost.capacity) }

    public func vcpus(withRegisters: Bool = true) -> [VCPUSnapshot] {
        runners.map { $0.snapshot(withRegisters: withRegisters) }
    }

    public func guestCounters(_ index: Int) -> GuestCounters { runners[index].guestCounters }

    public func vcpuState(_ index: Int) -> VCPURunState { runners[index].currentState }

    /// Waits until vCPU `index` is in one of `states`.
    public func waitForState(_ index: Int, _ states: Set<VCPURunState>, timeout: TimeInterval) -> Bool {
        runners[index].wait(for: states, timeout: timeout)
    }

    /// `vcpu-control`.
    public func vcpuControl(index: Int?, action: VCPUAction) throws(VMMError) -> [VCPURunState] {
        try requireMutations(.vcpuControl)
        let targets: [VCPURunner]
        if let index {
            guard runners.indices.contains(index) else {
                throw VMMError(.genericError, "no vCPU \(index) (the VM has \(runners.count))")
            }
            targets = [runners[index]]
        } else { targets = runners }
        for r in targets {
            switch action {
            case .pause:
                r.requestPause()
                _ = r.wait(for: [.paused, .halted, .faultStopped, .shutdown, .error], timeout: 2)
            case .resume:
                // The reply gives the states after the resume: wait until the vCPU has left `paused`.
                r.requestResume()
                _ = r.wait(for: [.running, .halted, .faultStopped, .shutdown, .error], timeout: 2)
            case .step:
                r.requestStep()
                _ = r.wait(for: [.paused, .halted, .faultStopped, .shutdown, .error], timeout: 2)
            }
        }
        return targets.map(\.currentState)
    }

    public func setFaultPolicy(_ policy: FaultPolicy) throws(VMMError) {
        try requireMutations(.setFaultPolicy)
        policyState.withLock { $0 = policy }
    }

    // MARK: Fault injection

    public func injectFault(kind: InjectionKind, vcpu: Int? = nil, gpa: UInt64? = nil, size: UInt64? = nil)
        throws(VMMError) -> InjectionReport
    {
        try requireMutations(.injectFault)
        guard configuration.allowFaultInjection else {
            throw VMMError(.permissionDenied, "inject-fault needs the VMM started with --allow-fault-injection")
        }
        func runner() throws(VMMError) -> VCPURunner {
            let i = vcpu ?? 0
            guard runners.indices.contains(i) else { throw VMMError(.genericError, "no vCPU \(i) (the VM has \(runners.count))") }
            return runners[i]
        }
        func range() throws(VMMError) -> (UInt64, UInt64) {
            guard let gpa, let size else { throw VMMError(.genericError, "\(kind.rawValue) needs gpa and size") }
            return (gpa, size)
        }
        let report: InjectionReport
        switch kind {
        case .nmi:
            let r = try runner()
            try r.perform { v throws(KVMError) in try v.nmi() }
            r.wakeIfHalted()
            report = InjectionReport(kind: kind, vcpu: r.index, detail: "KVM_NMI queued on vcpu \(r.index)")
        case .mce:
            let r = try runner()
            guard let gpa else { throw VMMError(.genericError, "mce needs gpa") }
            if case .failure(let e)? = mceSetup {
                throw VMMError(.unsupported, "KVM_X86_SETUP_MCE failed: \(e.errnoName) (\(e.errnoText))")
            }
            guard mceSetup != nil else { throw VMMError(.unsupported, "the kernel emulates no MCE banks (KVM_CAP_MCE is 0)") }
            var mce = kvm_x86_mce()
            // VAL | UC | EN | MISCV | ADDRV; MCG_STATUS = MCIP | EIPV | RIPV: a recoverable-context #MC.
            let val: UInt64 = 1 << 63, uc: UInt64 = 1 << 61, en: UInt64 = 1 << 60
            let miscv: UInt64 = 1 << 59, addrv: UInt64 = 1 << 58
            mce.status = val | uc | en | miscv | addrv
            mce.addr = gpa
            mce.misc = 0x86   // address mode: physical, LSB 12 (a page)
            mce.mcg_status = 0x7
            mce.bank = 1
            let m = mce
            do throws(VMMError) { try r.perform { v throws(KVMError) in try v.injectMCE(m) } } catch {
                throw VMMError(.unsupported, "KVM_X86_SET_MCE refused: \(error.description)")
            }
            r.wakeIfHalted()
            report = InjectionReport(kind: kind, vcpu: r.index, gpa: gpa, detail: "KVM_X86_SET_MCE bank 1 addr \(hex(gpa)) on vcpu \(r.index)")
        case .discard, .revoke, .flip:
            let (g, s) = try range()
            var followUp: [VMEvent] = []
            let detail: String
            memory.lock.lock()
            do throws(VMMError) {
                switch kind {
                case .discard:
                    try memory.discardContents(gpa: g, size: s)
                    detail = "backing punched (FALLOC_FL_PUNCH_HOLE): contents lost"
                case .revoke:
                    try memory.revoke(gpa: g, size: s)
                    followUp.append(.memslotsChanged(generation: memory.generation))
                    detail = "mapping removed: the next access to each page faults"
                default:
                    let currentlyPrivate = g < memory.ramSize ? memory.attributes.isPrivate(gfn: g / 4096) : true
                    let result = try countedConvert(gpa: g, size: s, toPrivate: !currentlyPrivate, discard: false, cause: .injection)
                    followUp = conversionEvents(result, gpa: g, size: s, toPrivate: !currentlyPrivate,
                                                cause: .injection, vcpu: nil)
                    detail = "converted to \(currentlyPrivate ? "shared" : "private") behind the guest's back (\(result.runsChanged) runs changed)"
                }
            } catch {
                memory.lock.unlock()
                throw error
            }
            report = InjectionReport(kind: kind, vcpu: nil, gpa: g, size: s, detail: detail)
            // Recorded before the lock goes, so the record precedes every fault the injection causes
            // (vCPU threads take the same lock before they record a fault).
            appendInjectionRecord(report)
            logEvents(followUp)
            memory.lock.unlock()
        }
        if kind == .nmi || kind == .mce {
            memory.lock.lock()
            appendInjectionRecord(report)
            memory.lock.unlock()
        }
        counters.injected(kind)
        events.append(.faultInjected(report))
        logger.notice("fault injected", metadata: ["kind": "\(kind.rawValue)", "detail": "\(report.detail)"])
        return report
    }

    /// The fault record an injection leaves. Caller holds the memory lock.
    private func appendInjectionRecord(_ report: InjectionReport) {
        let context = memory.faultContext(gfn: report.gpa.map { $0 / 4096 })
        faults.append(FaultRecord(timeNs: HostClock.monotonicNs(), vcpu: report.vcpu, gpa: report.gpa ?? 0,
                                  size: report.size ?? 0, flags: 0, isPrivate: false, access: .unknown, errno: nil,
                                  source: .vmm, exit: .none, attribute: context.attribute, slot: context.slot,
                                  action: .injected))
    }

    /// A conversion, counted (asked for; done, with its time) for `query-metrics`. Caller holds the memory lock.
    private func countedConvert(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool, cause: ConversionCause)
        throws(VMMError) -> ConversionResult
    {
        counters.conversionRequested(cause, toPrivate: toPrivate)
        let result = try memory.convert(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard)
        counters.conversionDone(cause, toPrivate: toPrivate, durationNs: result.durationNs)
        return result
    }

    /// Logs the events of a memory change. Called with the memory lock held, so anyone who sees the new state
    /// through a query also finds its events in the log (the event log never takes the memory lock).
    private func logEvents(_ list: [VMEvent]) {
        for e in list { events.append(e) }
    }

    /// The events a conversion emits: the attribute change (when runs changed), then the memslot change.
    /// `memory.generation` is read as it is now: call with the memory lock held, right after the conversion.
    private func conversionEvents(_ result: ConversionResult, gpa: UInt64, size: UInt64, toPrivate: Bool,
                                  cause: ConversionCause, vcpu: Int?) -> [VMEvent] {
        var out: [VMEvent] = []
        if result.runsChanged > 0 {
            out.append(.memoryAttributesChanged(gpa: gpa, size: size, isPrivate: toPrivate, cause: cause, vcpu: vcpu))
        }
        if result.memslotsChanged { out.append(.memslotsChanged(generation: memory.generation)) }
        return out
    }

    // MARK: Exit handlers (vCPU threads)

    /// An MMIO exit: a vmm-engine memory fault when the GPA is RAM, an ordinary MMIO access otherwise.
    func handleMMIO(runner: VCPURunner, address: UInt64, read: UnsafeMutableRawBufferPointer?, write: UnsafeRawBufferPointer?) {
        let entered = HostClock.monotonicNs()
        guard let c = memory.classify(address) else {
            read?.fillAllOnes()
            return
        }
        var conversionNs: UInt64 = 0
        func emitted() { faultEmitCost.append { _ in HostClock.monotonicNs() &- entered &- conversionNs } }
        var resumed = false
        while true {
            memory.lock.lock()
            let gfn = c.gfn
            let attrPrivate = memory.attributes.isPrivate(gfn: gfn)
            let isRevoked = memory.revoked.isPrivate(gfn: gfn)
            if attrPrivate == c.privateView && !isRevoked {
                // The view is mapped again (a relayout raced with this access): complete it, no fault.
                complete(c, read: read, write: write)
                memory.lock.unlock()
                runner.countRelayoutRetry()
                return
            }
            let context = memory.faultContext(gfn: gfn)
            var record = FaultRecord(
                timeNs: HostClock.monotonicNs(), vcpu: runner.index, gpa: address & ~0xFFF, size: 4096,
                flags: c.privateView ? FaultRecord.flagPrivate : 0, isPrivate: c.privateView,
                access: write != nil ? .write : .read, errno: nil, source: .vmm, exit: .mmio,
                attribute: context.attribute, slot: context.slot, action: .reported)
            let policy = resumed ? .convert : faultPolicy
            switch policy {
            case .convert:
                var followUp: [VMEvent] = []
                let converting = HostClock.monotonicNs()
                do {
                    if attrPrivate == c.privateView {
                        try memory.remap(gfn: gfn)
                        record.action = .known(.remapped)
                        followUp = [.memslotsChanged(generation: memory.generation)]
                    } else {
                        let result = try countedConvert(gpa: gfn * 4096, size: 4096, toPrivate: c.privateView, discard: true, cause: .implicit)
                        record.action = .known(.converted)
                        followUp = conversionEvents(result, gpa: gfn * 4096, size: 4096, toPrivate: c.privateView,
                                                    cause: .implicit, vcpu: runner.index)
                    }
                } catch {
                    record.action = .known(.reported)
                    logger.warning("implicit conversion failed", metadata: ["gpa": "\(hex(address))", "error": "\(error)"])
                }
                conversionNs = HostClock.monotonicNs() &- converting
                faults.append(record)
                if !resumed { emitted() }  // after a pause the wait would count
                if record.action == .reported {
                    read?.fillAllOnes()
                } else {
                    complete(c, read: read, write: write)
                }
                logEvents(followUp)
                memory.lock.unlock()
                return
            case .report:
                faults.append(record)
                emitted()
                memory.lock.unlock()
                read?.fillAllOnes()
                return
            case .pause:
                record.action = .known(.paused)
                faults.append(record)
                memory.lock.unlock()
                guard runner.faultStop(reason: "memory fault at \(hex(address)) (\(c.privateView ? "private" : "shared") access, page is \(record.attribute))") else {
                    read?.fillAllOnes()
                    return
                }
                resumed = true
            }
        }
    }

    /// An emulation failure (`KVM_EXIT_INTERNAL_ERROR`, suberror EMULATION): when the vCPU was fetching its next
    /// instruction from a RAM page whose view has no memslot (the vmm engine's wrong-view case), it is a memory
    /// fault with access `exec`, handled by the policy like a data access; true when it was one. Without paging
    /// (the built-in guest) the fetch address is CS.base + RIP; the instruction may straddle into the next page.
    /// KVM re-runs the instruction on the next `KVM_RUN` (RIP has not moved), so a conversion lets it proceed.
    func handleFetchFault(runner: VCPURunner) -> Bool {
        guard let regs = try? runner.vcpu.registers(), let sregs = try? runner.vcpu.specialRegisters(),
              sregs.cr0 & 0x8000_0000 == 0 else { return false }   // with paging the fetch address is virtual
        let mask: UInt64 = sregs.efer & 0x400 != 0 ? ~0 : 0xFFFF_FFFF
        let linear = (sregs.cs.base &+ regs.rip) & mask
        // The fetch (exec), then what the CPU reads by itself while running it: the descriptor tables and the
        // stack (delivering an exception or loading a segment). Those are not the instruction's own access, so
        // their records say `unknown`.
        let stack = (sregs.ss.base &+ regs.rsp &- 4) & mask
        let candidates: [(UInt64, FaultAccess)] = [
            (linear, .exec), ((linear &+ 14) & mask, .exec),
            (sregs.gdt.base & mask, .unknown), (sregs.idt.base & mask, .unknown), (stack, .unknown),
        ]
        memory.lock.lock()
        var hit: (gpa: UInt64, c: GPAClassification, access: FaultAccess)?
        for (gpa, access) in candidates {
            guard let c = memory.classify(gpa) else { continue }
            if memory.attributes.isPrivate(gfn: c.gfn) != c.privateView || memory.revoked.isPrivate(gfn: c.gfn) {
                hit = (gpa, c, access)
                break
            }
        }
        memory.lock.unlock()
        guard let (gpa, c, access) = hit else {
            // No such page now; another vCPU may have converted or remapped it since this exit: re-run. An
            // emulation failure with another cause repeats at the same place and is then reported as it is.
            if runner.noteRepeatedFault(gpa: linear | 1) { return false }
            runner.countRelayoutRetry()
            return true
        }
        if runner.noteRepeatedFault(gpa: gpa & ~0xFFF) {
            runner.stopWithError("\(access == .exec ? "instruction fetch" : "implicit access") at \(hex(gpa)) keeps faulting after the page was converted")
            return true
        }
        memory.lock.lock()
        let context = memory.faultContext(gfn: c.gfn)
        memory.lock.unlock()
        let page = c.gfn..<(c.gfn + 1)
        if isResolved(pages: page, toPrivate: c.privateView) {
            // Another vCPU converted the page between this exit and now: re-run, no record.
            runner.countRelayoutRetry()
            return true
        }
        let record = FaultRecord(
            timeNs: HostClock.monotonicNs(), vcpu: runner.index, gpa: gpa & ~0xFFF, size: 4096,
            flags: c.privateView ? FaultRecord.flagPrivate : 0, isPrivate: c.privateView, access: access, errno: nil,
            source: .vmm, exit: .internalError, attribute: context.attribute, slot: context.slot, action: .reported)
        let reason = "\(access == .exec ? "instruction fetch" : "implicit access") at \(hex(gpa)) (\(c.privateView ? "private" : "shared") view, page is \(context.attribute))"
        // KVM re-runs the instruction: whatever the policy, nothing is completed here.
        applyPolicy(record, pages: page, toPrivate: c.privateView, runner: runner, reason: reason)
        return true
    }

    /// Whether `pages` already are what an access wanting `toPrivate` needs (attribute, and mapped).
    private func isResolved(pages: Range<UInt64>, toPrivate: Bool) -> Bool {
        memory.lock.lock(); defer { memory.lock.unlock() }
        return memory.attributes.isUniform(pages: pages, private: toPrivate) && memory.revoked.isUniform(pages: pages, private: false)
    }

    private enum Resolution { case converted, remapped, alreadyDone, failed(String) }

    /// Gives a faulting access what it wanted: converts `pages` implicitly, or maps revoked pages back.
    private func resolveImplicitly(pages: Range<UInt64>, toPrivate: Bool, vcpu: Int) -> Resolution {
        memory.lock.lock(); defer { memory.lock.unlock() }
        do {
            if memory.attributes.isUniform(pages: pages, private: toPrivate) {
                guard !memory.revoked.isUniform(pages: pages, private: false) else { return .alreadyDone }
                for g in pages { try memory.remap(gfn: g) }
                logEvents([.memslotsChanged(generation: memory.generation)])
                return .remapped
            }
            let gpa = pages.lowerBound * 4096, size = UInt64(pages.count) * 4096
            let result = try countedConvert(gpa: gpa, size: size, toPrivate: toPrivate, discard: true, cause: .implicit)
            logEvents(conversionEvents(result, gpa: gpa, size: size, toPrivate: toPrivate, cause: .implicit, vcpu: vcpu))
            return .converted
        } catch {
            logger.warning("implicit conversion failed", metadata: ["gpa": "\(hex(pages.lowerBound * 4096))", "error": "\(error)"])
            return .failed(error.description)
        }
    }

    /// The policy for a fault the vCPU retries by itself (a kernel exit, an instruction fetch): `convert`
    /// resolves it now, `pause` stops the vCPU and resolves it on resume, `report` keeps the vCPU on the access.
    private func applyPolicy(_ r: FaultRecord, pages: Range<UInt64>, toPrivate: Bool, runner: VCPURunner, reason: String) {
        var record = r
        switch faultPolicy {
        case .convert:
            switch resolveImplicitly(pages: pages, toPrivate: toPrivate, vcpu: runner.index) {
            case .alreadyDone:
                runner.countRelayoutRetry()   // resolved by someone else since the check: no fault of its own
            case .converted:
                record.action = .known(.converted)
                faults.append(record)
            case .remapped:
                record.action = .known(.remapped)
                faults.append(record)
            case .failed(let why):
                faults.append(record)
                runner.stopWithError("implicit conversion failed: \(why) (\(reason))")
            }
        case .pause:
            record.action = .known(.paused)
            faults.append(record)
            if runner.faultStop(reason: reason) { _ = resolveImplicitly(pages: pages, toPrivate: toPrivate, vcpu: runner.index) }
        case .report:
            // Retried on the next KVM_RUN, the access can only fault again: the vCPU stays on it until someone
            // converts the page (or changes the policy) and resumes it.
            faults.append(record)
            _ = runner.faultStop(reason: reason + ", policy report: waiting on the access")
        }
    }

    /// Performs the access of an MMIO exit against the backing of the view it used. Caller holds the memory lock.
    private func complete(_ c: GPAClassification, read: UnsafeMutableRawBufferPointer?, write: UnsafeRawBufferPointer?) {
        guard let p = memory.hostPointer(ramOffset: c.ramOffset, privateView: c.privateView) else {
            read?.fillAllOnes()
            return
        }
        let room = Int(memory.ramSize - c.ramOffset)
        if let read, let base = read.baseAddress { base.copyMemory(from: p, byteCount: min(read.count, room)) }
        if let write, let base = write.baseAddress { p.copyMemory(from: base, byteCount: min(write.count, room)) }
    }

    /// `KVM_EXIT_MEMORY_FAULT` (kernel engine, or any kernel that reports one).
    ///
    /// The record keeps the kernel's `flags`, `gpa`, `size` and errno verbatim. Its `private` is the direction the
    /// access wanted: on the kernel engine's layout that is the view the guest used (the private view's GPAs, or
    /// the shared alias), because a `KVM_X86_SW_PROTECTED_VM` guest cannot say it and the kernel's PRIVATE bit
    /// reports the attribute the access met (docs/attribute-engines.md). Elsewhere it is the kernel's bit.
    func handleKernelFault(runner: VCPURunner, _ f: MemoryFaultExit) {
        memory.lock.lock()
        let c = memory.classify(f.gpa)
        let context = memory.faultContext(gfn: c?.gfn)
        memory.lock.unlock()
        let wantsPrivate = c?.privateView ?? f.isPrivate
        let record = FaultRecord(timeNs: HostClock.monotonicNs(), vcpu: runner.index, gpa: f.gpa, size: f.size,
                                 flags: f.flags, isPrivate: wantsPrivate, access: .unknown,
                                 errno: KVMError.name(of: f.errno), source: .kernel, exit: .memoryFault,
                                 attribute: context.attribute, slot: context.slot, action: .reported)
        let unknownFlags = f.flags & ~MemoryFaultExit.flagPrivate
        if unknownFlags != 0 || c == nil || runner.noteRepeatedFault(gpa: f.gpa) {
            faults.append(record)
            runner.stopWithError(unknownFlags != 0 ? "KVM_EXIT_MEMORY_FAULT with unknown flags \(hex(unknownFlags))"
                                 : c == nil ? "KVM_EXIT_MEMORY_FAULT outside RAM at \(hex(f.gpa))"
                                 : "KVM_EXIT_MEMORY_FAULT repeated at \(hex(f.gpa))")
            return
        }
        guard let c else { return }
        // The RAM pages the fault names, in the private view's GPAs: what an implicit conversion converts.
        let first = c.ramOffset / 4096
        let last = min(memory.pageCount, (c.ramOffset &+ max(f.size, 1) &+ 4095) / 4096)
        let pages = first..<max(last, first + 1)
        if isResolved(pages: pages, toPrivate: wantsPrivate) {
            // The view the access wanted is mapped (again): the access met a memslot being re-laid by a conversion
            // elsewhere, not a wrong view. KVM retries it on the next run; no record, as on the vmm engine.
            runner.countRelayoutRetry()
            return
        }
        let reason = "KVM_EXIT_MEMORY_FAULT at \(hex(f.gpa)) (\(wantsPrivate ? "private" : "shared") access, page is \(context.attribute))"
        applyPolicy(record, pages: pages, toPrivate: wantsPrivate, runner: runner, reason: reason)
    }

    /// The selftest stopped for the host: hand the range to the hook.
    func handleSelftestSync(runner: VCPURunner, phase: UInt64) {
        let block = Int(GuestLayout.parameterBlock(runner.index))
        memory.lock.lock()
        let mapping = memory.currentMapping(gfn: UInt64(block) / 4096)
        memory.lock.unlock()
        guard let ram = mapping else { return }
        let gpa = UInt64(ram.load32(at: block + Int(ParameterBlock.selftestGPA)))
        let size = UInt64(ram.load32(at: block + Int(ParameterBlock.selftestSize)))
        guard let p = SelftestPhase(rawValue: UInt32(truncatingIfNeeded: phase)) else {
            logger.warning("selftest sync with unknown phase", metadata: ["phase": "\(phase)"])
            return
        }
        selftestHook?(SelftestSync(vcpu: runner.index, phase: p, gpa: gpa, size: size, memory: memory))
    }

    /// The guest's doorbell: the descriptor at `descriptor` (private RAM) asks for a conversion.
    func handleDoorbell(runner: VCPURunner, descriptor: UInt64) {
        memory.lock.lock()
        // The descriptor lives in the guest's own memory: private RAM (vmm engine) or its shared image (kernel engine).
        guard descriptor % 4 == 0, descriptor + 16 <= memory.ramSize, descriptor / 4096 == (descriptor + 15) / 4096,
              let ram = memory.currentMapping(gfn: descriptor / 4096),
              memory.attributes.isPrivate(gfn: descriptor / 4096) || memory.engine.kind == .kernel else {
            memory.lock.unlock()
            logger.warning("doorbell descriptor outside the guest's own RAM", metadata: ["gpa": "\(hex(descriptor))"])
            return
        }
        let gpa = UInt64(ram.load32(at: Int(descriptor)))
        let pages = UInt64(ram.load32(at: Int(descriptor) + 4))
        let toPrivate = ram.load32(at: Int(descriptor) + 8) != 0
        memory.lock.unlock()
        var status: UInt32 = 0
        do {
            _ = try convert(gpa: gpa, size: pages * 4096, toPrivate: toPrivate, discard: true, cause: .guestRequest, vcpu: runner.index)
        } catch {
            status = error.errorClass == .invalidRange ? 1 : 2
            logger.warning("guest conversion request refused", metadata: ["vcpu": "\(runner.index)", "error": "\(error)"])
        }
        memory.lock.lock()
        ram.store32(status, at: Int(descriptor) + 12)
        memory.lock.unlock()
    }

    /// `KVM_HC_MAP_GPA_RANGE`: rbx-style args (gpa, pages, attributes). Returns the value for the guest's RAX.
    func handleHypercall(runner: VCPURunner, _ call: Hypercall) -> UInt64 {
        guard call.number == Hypercall.mapGPARange, call.args.count >= 3 else { return UInt64(bitPattern: Int64(-ENOSYS)) }
        let attrs = call.args[2]
        let pageSizes: [UInt64] = [4096, 2 << 20, 1 << 30]
        let sizeCode = Int(attrs & 0xF)
        guard attrs & ~0x1F == 0, sizeCode < pageSizes.count else { return UInt64(bitPattern: Int64(-EINVAL)) }
        let (size, overflow) = call.args[1].multipliedReportingOverflow(by: pageSizes[sizeCode])
        guard !overflow else { return UInt64(bitPattern: Int64(-EINVAL)) }
        do {
            _ = try convert(gpa: call.args[0], size: size, toPrivate: attrs & 0x10 != 0, discard: true,
                            cause: .guestRequest, vcpu: runner.index)
            return 0
        } catch {
            return UInt64(bitPattern: Int64(-EINVAL))
        }
    }
}

/// One stop of the conversion selftest: which vCPU, which phase, the range, and the backings to check.
public struct SelftestSync: @unchecked Sendable {
    // @unchecked: `memory` is only read through its backings' mappings, which the hook may touch freely.
    public var vcpu: Int
    public var phase: SelftestPhase
    public var gpa: UInt64
    public var size: UInt64
    public let memory: GuestMemory
}

extension UnsafeMutableRawBufferPointer {
    /// What a read from nothing returns on x86: all ones.
    func fillAllOnes() { if let base = baseAddress { base.initializeMemory(as: UInt8.self, repeating: 0xFF, count: count) } }
}
