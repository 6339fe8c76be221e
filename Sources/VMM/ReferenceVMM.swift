import Foundation
import GuestCode
import KVM
import Logging
import Schema

/// What `captureState` returns: one consistent cut of the memory layout and the fault ring.
public struct StateCapture: Sendable {
    public var memslots: [MemslotInfo]
    public var attributes: AttributeRuns
    public var faults: [FaultRecord]
    public var faultsTotal: UInt64
    public var faultsDropped: UInt64
}

/// The reference VMM: one VM on real KVM running the built-in guest, with the API the control server calls.
///
/// A façade: `VMBuilder` brings the VM up, one `ExitHandler` per exit kind handles the vCPUs' exits
/// (`Sources/VMM/Exits`), `FaultInjector` injects, and `VMCore` holds what they share. Here are life cycle,
/// permissions, and the memory and vCPU API.
public final class ReferenceVMM: Sendable {
    public let configuration: VMMConfiguration
    public let capabilities: KVMCapabilities
    public let decision: AttributeEngineDecision
    public let system: KVMSystem
    public let vm: VirtualMachine
    public let guest: BuiltInGuest
    let core: VMCore
    let runners: [VCPURunner]
    private let exitHandlers: ExitHandlers
    private let portDevice: GuestPortDevice
    private let injector: FaultInjector

    public var memory: GuestMemory { core.memory }
    public var faults: FaultRing { core.faults }
    public var events: EventLog { core.events }
    /// Memory-fault exits, conversions and injections counted for exporters (`query-metrics`).
    public var counters: VMMCounters { core.counters }
    /// Whether `KVM_X86_SETUP_MCE` worked, or the errno it failed with.
    public var mceSetup: Result<UInt64, KVMError>? { injector.mceSetup }
    public var faultPolicy: FaultPolicy { core.faultPolicy }
    public var vcpuCount: Int { runners.count }
    public var engineKind: AttributeEngineKind { memory.engine.kind }
    public var sharedAlias: UInt64? { memory.engine.sharedAlias }

    /// Called on the vCPU thread at each `GuestPort.selftestSync` of the conversion selftest; the vCPU waits
    /// until it returns. Set before `start()`; for tests (the host side of the selftest).
    public var selftestHook: (@Sendable (SelftestSync) -> Void)? {
        get { portDevice.selftestHook }
        set { portDevice.selftestHook = newValue }
    }

    public init(_ config: VMMConfiguration, logger: Logger = Logger(label: "vmscope.vmm")) throws(VMMError) {
        let built = try VMBuilder(config)
        configuration = config
        capabilities = built.capabilities
        decision = built.decision
        system = built.system
        vm = built.vm
        guest = built.guest
        core = VMCore(configuration: config, memory: built.memory, counters: VMMCounters(), logger: logger)
        portDevice = GuestPortDevice(core: core)
        exitHandlers = ExitHandlers(builtIn: [portDevice, MMIOFaultHandler(core: core), FetchFaultHandler(core: core),
                                              KernelFaultHandler(core: core), HypercallHandler(core: core)])
        injector = FaultInjector(core: core, mceSetup: built.mceSetup)
        let events = core.events, handlers = exitHandlers
        runners = built.vcpus.enumerated().map { VCPURunner(index: $0.offset, vcpu: $0.element, events: events, handlers: handlers) }
        logger.info("VM ready", metadata: [
            "name": "\(config.name)", "vcpus": "\(config.vcpus)", "ram": "\(config.ramSize)",
            "engine": "\(decision.engine.rawValue)", "reason": "\(decision.reason)",
            "memslots": "\(memory.memslotCount)", "alias": "\(sharedAlias.map { hex($0) } ?? "none")",
        ])
    }

    /// Adds a handler every vCPU asks before the built-in ones (docs/architecture.md, "A new exit"). Refused once the
    /// vCPUs have started.
    public func register(exitHandler: any ExitHandler) throws(VMMError) {
        guard exitHandlers.register(exitHandler) else {
            throw VMMError(.genericError, "exit handlers are registered before the vCPUs start")
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
        core.logger.info("vCPU threads joined")
    }

    // MARK: Permission

    private func requireMutations(_ command: CommandName) throws(VMMError) {
        guard configuration.allowMutations else {
            throw VMMError(.permissionDenied, "\(command.rawValue) needs the VMM started with --allow-mutations")
        }
    }

    // MARK: Memory API

    public func queryMemoryAttributes(gpa: UInt64? = nil, size: UInt64? = nil) throws(VMMError) -> AttributeRuns {
        try memory.withLock { () throws(VMMError) -> AttributeRuns in
            let start = gpa ?? 0
            // Without a size: up to the end of RAM; a start past RAM is refused by name, not subtracted from it.
            guard size != nil || start < memory.ramSize else {
                throw VMMError(.invalidRange, "gpa \(hex(start)) is outside RAM [0, \(hex(memory.ramSize)))")
            }
            return core.attributes(pages: try memory.pages(gpa: start, size: size ?? memory.ramSize - start))
        }
    }

    /// `query-metrics`: counters since start, gauges now, conversion times numbered after `conversionTimesAfter`.
    public func metrics(conversionTimesAfter: UInt64?) -> VMMetrics {
        let (bytes, runs, slots) = memory.withLock {
            (memory.attributes.pageCounts(pages: 0..<(memory.ramSize / 4096)), memory.attributes.runCount, memory.memslots.count)
        }
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

    public var memslots: [MemslotInfo] { memory.withLock { memory.memslots } }

    /// Memslots, the attribute runs of all RAM and the newest fault records as of one instant (`query-snapshot`):
    /// taken under the lock every conversion, remap and fault record takes, so the three agree.
    public func captureState(faultLimit: Int) -> StateCapture {
        memory.withLock {
            StateCapture(memslots: memory.memslots, attributes: core.attributes(pages: 0..<(memory.ramSize / 4096)),
                         faults: faults.recent(faultLimit), faultsTotal: faults.total, faultsDropped: faults.dropped)
        }
    }

    /// `set-memory-attributes`: a conversion the operator asked for.
    public func setMemoryAttributes(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool = true)
        throws(VMMError) -> ConversionResult
    {
        try requireMutations(.setMemoryAttributes)
        return try core.convert(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard, cause: .command, vcpu: nil)
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
        return try memory.withLock { () throws(VMMError) in try memory.read(gpa: gpa, size: size, privateView: privateView) }
    }

    // MARK: vCPUs

    /// The recent per-fault recording costs (see `VMCore.faultEmitCost`), oldest first: the benchmark's
    /// `vmm-fault-emit-ns`.
    public func recentFaultEmitCosts() -> [UInt64] { core.faultEmitCost.recent(core.faultEmitCost.capacity) }

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
        core.setFaultPolicy(policy)
    }

    // MARK: Fault injection

    public func injectFault(kind: InjectionKind, vcpu: Int? = nil, gpa: UInt64? = nil, size: UInt64? = nil)
        throws(VMMError) -> InjectionReport
    {
        try requireMutations(.injectFault)
        guard configuration.allowFaultInjection else {
            throw VMMError(.permissionDenied, "inject-fault needs the VMM started with --allow-fault-injection")
        }
        let runners = runners
        return try injector.inject(kind: kind, runner: { () throws(VMMError) -> VCPURunner in
            let i = vcpu ?? 0
            guard runners.indices.contains(i) else { throw VMMError(.genericError, "no vCPU \(i) (the VM has \(runners.count))") }
            return runners[i]
        }, gpa: gpa, size: size)
    }
}
