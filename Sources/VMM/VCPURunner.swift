import Schema
import CKVM
import Foundation
import GuestCode
import KVM
#if canImport(Glibc)
import Glibc
#endif

/// What `query-vcpus` shows of one vCPU.
public struct VCPUSnapshot: Sendable {
    public var index: Int
    public var threadID: Int32
    public var state: VCPURunState
    public var lastExit: String
    public var exitCounts: [String: UInt64]
    public var guest: GuestCounters
    public var registers: kvm_regs?
    public var specialRegisters: kvm_sregs?
    public var statistics: [String: UInt64]
    /// Why the vCPU is in state `error` (the exit and its data, e.g. an internal error's suberror), else nil.
    public var errorDetail: String?
}

/// What the built-in guest reported through its ports.
public struct GuestCounters: Sendable, Equatable {
    public var heartbeat: UInt64 = 0
    public var heartbeats: UInt64 = 0
    public var integrityErrors: UInt64 = 0
    public var bounceErrors: UInt64 = 0
    public var mceSeen: UInt64 = 0
    public var nmiSeen: UInt64 = 0
    public var exceptions: UInt64 = 0
    public var lastException: UInt64?
    public var doorbellRequests: UInt64 = 0
    public var doorbellFailures: UInt64 = 0
    /// MMIO exits at RAM GPAs whose view was mapped again by the time they were handled (a relayout race).
    public var relayoutRetries: UInt64 = 0
    /// Conversion-selftest stops (`GuestPort.selftestSync`).
    public var selftestSyncs: UInt64 = 0
}

private let kickSignal = SIGUSR1
private let installKickHandler: Void = {
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in }
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0          // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(kickSignal, &action, nil)
}()

/// One vCPU thread: runs `KVM_RUN`, dispatches exits, and obeys pause/resume/step.
///
/// The thread never waits on a reader: fault records and events go to bounded rings. Other threads talk to
/// it through `cond`-guarded flags and a queue of requests it runs between two `KVM_RUN`s (KVM serialises
/// vCPU ioctls against `KVM_RUN`, so a register read from another thread would wait for the next exit).
final class VCPURunner: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `cond`, except what only the vCPU thread touches.
    let index: Int
    let vcpu: VCPU
    unowned let vmm: ReferenceVMM
    let statistics: BinaryStats?

    private let cond = NSCondition()
    private var state = VCPURunState.paused
    private var pauseRequested = true
    private var steps = 0
    private var stopRequested = false
    private var resumeFault = false
    private var requests: [() -> Void] = []
    private var exitCounts: [String: UInt64] = [:]
    private var lastExit = "none"
    private var errorDetail: String?
    private var counters = GuestCounters()
    private var threadID: Int32 = 0
    private var thread: pthread_t?
    private var threadRunning = false
    /// The registers `query-vcpus` last read from the running vCPU, and when (monotonic ns).
    private var lastRegisters: (pair: RegisterPair, atNs: UInt64)?
    /// A running vCPU's registers read within this long are given again instead of interrupting it once more: many
    /// clients asking at once (or one sending a burst) cost the guest one interruption per 10 ms, not one each. In
    /// the lab's slow guest each interruption took 20–100 ms of the control server, and every other client's
    /// command waited behind it. A vCPU in any other state (paused, stepped, halted) is read afresh.
    static let registerReuseNs: UInt64 = 10_000_000
    private var lastHeartbeatEvent: UInt64 = 0
    // vCPU thread only:
    private var lastFaultGPA: UInt64?
    private var repeatedFaults = 0

    init(index: Int, vcpu: VCPU, vmm: ReferenceVMM) {
        self.index = index
        self.vcpu = vcpu
        self.vmm = vmm
        self.statistics = try? vcpu.statistics()
    }

    // MARK: Thread

    /// vCPU threads are named this and their index (`/proc/PID/task/TID/comm`).
    public static let threadNamePrefix = "vmscope/vcpu "

    func start() {
        _ = installKickHandler
        cond.lock()
        threadRunning = true
        cond.unlock()
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let runner = Unmanaged<VCPURunner>.fromOpaque(arg!).takeRetainedValue()
            // Named as `top` and the trace source find vCPU threads (QEMU names its own "CPU N/KVM").
            _ = ckvm_set_thread_name(String((VCPURunner.threadNamePrefix + String(runner.index)).prefix(15)))
            runner.loop()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        cond.lock()
        thread = tid
        cond.unlock()
    }

    /// Stops the thread and waits for it.
    func stopAndJoin() {
        cond.lock()
        stopRequested = true
        let t = thread
        cond.broadcast()
        cond.unlock()
        kick()
        if let t { pthread_join(t, nil) }
        cond.lock()
        thread = nil
        cond.unlock()
    }

    /// Makes a `KVM_RUN` in progress return (`immediate_exit` plus a signal to the thread).
    private func kick() {
        vcpu.requestImmediateExit(true)
        cond.lock()
        let t = thread
        cond.unlock()
        if let t { pthread_kill(t, kickSignal) }
    }

    private func setState(_ new: VCPURunState, _ reason: String) {
        // Caller holds cond.
        guard state != new else { return }
        state = new
        errorDetail = new == .error ? reason : nil
        cond.broadcast()
        vmm.events.append(.vcpuStateChanged(index: index, state: new, reason: reason))
    }

    private func runRequests() {
        // Caller holds cond; requests run without it so they may take other locks.
        while !requests.isEmpty {
            let batch = requests
            requests.removeAll()
            cond.unlock()
            for r in batch { r() }
            cond.lock()
        }
    }

    private func loop() {
        cond.lock()
        threadID = ckvm_gettid()
        cond.unlock()
        while true {
            cond.lock()
            runRequests()
            while !stopRequested && ((pauseRequested && steps == 0) || state == .halted || state == .shutdown
                                     || state == .error || state == .faultStopped) {
                if state == .running { setState(.paused, "pause requested") }
                cond.wait()
                runRequests()
            }
            if stopRequested {
                threadRunning = false
                cond.broadcast()
                cond.unlock()
                return
            }
            if steps > 0 { steps -= 1 }
            setState(.running, pauseRequested ? "step" : "resumed")
            vcpu.requestImmediateExit(false)
            cond.unlock()

            do {
                let exit = try vcpu.run()
                dispatch(exit)
            } catch {
                cond.lock()
                lastExit = "error"
                setState(.error, error.description)
                cond.unlock()
            }
        }
    }

    // MARK: Control from other threads

    func requestPause() {
        cond.lock()
        pauseRequested = true
        steps = 0
        cond.unlock()
        kick()
    }

    func requestResume() {
        cond.lock()
        pauseRequested = false
        steps = 0
        if state == .faultStopped { resumeFault = true }
        if state == .halted { state = .paused }
        cond.broadcast()
        cond.unlock()
    }

    func requestStep() {
        cond.lock()
        pauseRequested = true
        steps = 1
        if state == .faultStopped { resumeFault = true }
        if state == .halted { state = .paused }
        cond.broadcast()
        cond.unlock()
    }

    /// Wakes a halted vCPU (an NMI or #MC is pending for it).
    func wakeIfHalted() {
        cond.lock()
        if state == .halted { state = .paused; cond.broadcast() }
        cond.unlock()
    }

    var currentState: VCPURunState {
        cond.lock(); defer { cond.unlock() }
        return state
    }

    /// Waits until the state is one of `states`, at most `timeout` seconds.
    func wait(for states: Set<VCPURunState>, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        cond.lock(); defer { cond.unlock() }
        while !states.contains(state) {
            if !cond.wait(until: deadline) { return states.contains(state) }
        }
        return true
    }

    /// Runs `body` on the vCPU thread between two runs (or here, when the thread is not running).
    func perform<T: Sendable>(timeout: TimeInterval = 2, _ body: @escaping @Sendable (VCPU) throws(KVMError) -> T)
        throws(VMMError) -> T
    {
        let slot = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        cond.lock()
        if !threadRunning || thread == nil {
            cond.unlock()
            do { return try body(vcpu) } catch { throw VMMError.kvm(error) }
        }
        let vcpu = self.vcpu
        requests.append {
            do throws(KVMError) { slot.result = .success(try body(vcpu)) } catch { slot.result = .failure(error) }
            done.signal()
        }
        cond.broadcast()
        cond.unlock()
        kick()
        guard done.wait(timeout: .now() + timeout) == .success, let result = slot.result else {
            throw VMMError(.genericError, "vcpu \(index) did not answer within \(timeout) s")
        }
        switch result {
        case .success(let v): return v
        case .failure(let e): throw VMMError.kvm(e)
        }
    }

    func snapshot(withRegisters: Bool) -> VCPUSnapshot {
        var regs: kvm_regs?
        var sregs: kvm_sregs?
        let now = HostClock.monotonicNs()
        cond.lock()
        let reused = state == .running ? lastRegisters.flatMap { now &- $0.atNs < Self.registerReuseNs ? $0.pair : nil } : nil
        cond.unlock()
        if withRegisters, let both = reused ?? (try? perform({ v throws(KVMError) in
            RegisterPair(regs: try v.registers(), sregs: try v.specialRegisters())
        })) {
            // One request: the vCPU thread is interrupted once for both register sets.
            regs = both.regs
            sregs = both.sregs
            if reused == nil {
                cond.lock()
                lastRegisters = state == .running ? (both, now) : nil
                cond.unlock()
            }
        }
        let stats = (try? statistics?.readScalars()) ?? [:]
        cond.lock(); defer { cond.unlock() }
        return VCPUSnapshot(index: index, threadID: threadID, state: state, lastExit: lastExit,
                            exitCounts: exitCounts, guest: counters, registers: regs, specialRegisters: sregs,
                            statistics: stats, errorDetail: errorDetail)
    }

    var guestCounters: GuestCounters {
        cond.lock(); defer { cond.unlock() }
        return counters
    }

    // MARK: Exits

    private func count(_ exit: VCPUExit) {
        let name = exit.reason.name
        cond.lock()
        exitCounts[name, default: 0] += 1
        lastExit = name
        cond.unlock()
    }

    private func dispatch(_ exit: VCPUExit) {
        if case .interrupted = exit {
            cond.lock(); exitCounts["INTR", default: 0] += 1; cond.unlock()
            return
        }
        count(exit)
        switch exit {
        case .ioOut(let port, let size, _, let data):
            var value: UInt64 = 0
            for (i, b) in data.prefix(min(size, 8)).enumerated() { value |= UInt64(b) << (8 * UInt64(i)) }
            guestPort(port, value: value)
        case .ioIn(_, _, _, let buffer):
            buffer.fillAllOnes()
        case .mmioRead(let address, let buffer):
            vmm.handleMMIO(runner: self, address: address, read: buffer, write: nil)
        case .mmioWrite(let address, let data):
            vmm.handleMMIO(runner: self, address: address, read: nil, write: data)
        case .hlt:
            cond.lock(); setState(.halted, "HLT"); cond.unlock()
        case .shutdown:
            cond.lock(); setState(.shutdown, "KVM_EXIT_SHUTDOWN (triple fault)"); cond.unlock()
        case .systemEvent(let type, _):
            cond.lock(); setState(.shutdown, "KVM_EXIT_SYSTEM_EVENT type \(type)"); cond.unlock()
        case .internalError(let suberror, let data):
            // An instruction fetch from a page whose view has no memslot (vmm engine) is an emulation failure:
            // a memory fault with access exec, handled by the policy like a data access.
            if suberror == VCPUExit.emulationFailure && vmm.handleFetchFault(runner: self) { return }
            cond.lock()
            setState(.error, "KVM_EXIT_INTERNAL_ERROR suberror \(suberror) (\(VCPUExit.internalErrorName(suberror)))"
                     + " data [\(data.map { hex($0) }.joined(separator: ", "))]")
            cond.unlock()
        case .failEntry(let reason, _):
            cond.lock(); setState(.error, "KVM_EXIT_FAIL_ENTRY reason \(hex(reason))"); cond.unlock()
        case .memoryFault(let fault):
            vmm.handleKernelFault(runner: self, fault)
        case .hypercall(let call):
            vcpu.setHypercallResult(vmm.handleHypercall(runner: self, call))
        case .debug, .interrupted:
            break
        case .other(let reason):
            cond.lock(); setState(.error, "unhandled exit \(reason.name)"); cond.unlock()
        }
    }

    private func report(_ kind: String, _ value: UInt64, _ update: (inout GuestCounters) -> Void) {
        cond.lock()
        update(&counters)
        cond.unlock()
        vmm.events.append(.guestReport(vcpu: index, kind: kind, value: value))
    }

    private func guestPort(_ port: UInt16, value: UInt64) {
        switch port {
        case GuestPort.heartbeat:
            let now = HostClock.monotonicNs()
            cond.lock()
            counters.heartbeat = value
            counters.heartbeats += 1
            let emit = now - lastHeartbeatEvent > 100_000_000
            if emit { lastHeartbeatEvent = now }
            cond.unlock()
            // Heartbeats come thousands of times a second: at most ten events a second per vCPU.
            if emit { vmm.events.append(.guestReport(vcpu: index, kind: "heartbeat", value: value)) }
        case GuestPort.integrityError:
            report("integrity-error", value) { $0.integrityErrors += 1 }
        case GuestPort.bounceError:
            report("bounce-error", value) { $0.bounceErrors += 1 }
        case GuestPort.mceSeen:
            report(GuestCounter.mceSeen.rawValue, value) { $0.mceSeen += 1 }
        case GuestPort.nmiSeen:
            report(GuestCounter.nmiSeen.rawValue, value) { $0.nmiSeen += 1 }
        case GuestPort.exception:
            report("exception", value) { $0.exceptions += 1; $0.lastException = value }
        case GuestPort.doorbellFailed:
            report("doorbell-failed", value) { $0.doorbellFailures += 1 }
        case GuestPort.selftestSync:
            cond.lock(); counters.selftestSyncs += 1; cond.unlock()
            vmm.handleSelftestSync(runner: self, phase: value)
        case GuestPort.doorbell:
            cond.lock(); counters.doorbellRequests += 1; cond.unlock()
            vmm.handleDoorbell(runner: self, descriptor: value)
        default:
            cond.lock(); exitCounts["IO unassigned port", default: 0] += 1; cond.unlock()
        }
    }

    func countRelayoutRetry() {
        cond.lock(); counters.relayoutRetries += 1; cond.unlock()
    }

    /// Called on the vCPU thread by the pause policy: stops until resumed (or stopped). True when resumed.
    func faultStop(reason: String) -> Bool {
        cond.lock()
        resumeFault = false
        pauseRequested = true
        setState(.faultStopped, reason)
        while !resumeFault && !stopRequested {
            cond.wait()
            runRequests()
        }
        let resumed = resumeFault
        resumeFault = false
        if resumed { setState(.paused, "resumed from fault") }
        cond.unlock()
        return resumed
    }

    /// Guards against a fault repeating forever at one GPA (kernel exits, instruction fetches). True when it has
    /// repeated too often.
    func noteRepeatedFault(gpa: UInt64) -> Bool {
        if lastFaultGPA == gpa { repeatedFaults += 1 } else { lastFaultGPA = gpa; repeatedFaults = 1 }
        return repeatedFaults > 16
    }

    func stopWithError(_ reason: String) {
        cond.lock(); setState(.error, reason); cond.unlock()
    }
}

/// Carries a result from the vCPU thread back to the thread waiting in `perform`.
private final class ResultBox<T>: @unchecked Sendable {
    // @unchecked: written once by the vCPU thread before the semaphore is signalled, read after the wait.
    var result: Result<T, KVMError>?
}

/// Both register sets, read in one trip to the vCPU thread.
private struct RegisterPair: @unchecked Sendable {
    // @unchecked: plain C structs of integers.
    var regs: kvm_regs
    var sregs: kvm_sregs
}
