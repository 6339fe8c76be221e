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
    /// Failed conversion requests the guest reported (`GuestPort.doorbellFailed`), by either channel.
    public var doorbellFailures: UInt64 = 0
    /// `KVM_HC_MAP_GPA_RANGE` exits the VMM answered.
    public var hypercallRequests: UInt64 = 0
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

/// One vCPU thread: runs `KVM_RUN` and hands each exit to the exit handlers (`ExitHandler`), in order; what no
/// handler takes is what KVM's exit means for the vCPU's state (halt, shutdown, error). Obeys pause, resume and step.
///
/// The thread never waits on a reader: fault records and events go to bounded rings. Other threads talk to it
/// through `cond`-guarded flags and a queue of requests it runs between two `KVM_RUN`s (KVM serialises vCPU ioctls
/// against `KVM_RUN`, so a register read from another thread would wait for the next exit). It holds no VMM: only
/// its vCPU, the event log its state changes go to, and the handlers.
final class VCPURunner: VCPUContext, @unchecked Sendable {
    // @unchecked: mutable state is guarded by `cond`, except what only the vCPU thread touches.
    let index: Int
    let vcpu: VCPU
    let statistics: BinaryStats?
    private let events: EventLog
    private let exitHandlers: ExitHandlers

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
    // vCPU thread only:
    private var handlers: [any ExitHandler] = []
    private var lastFaultGPA: UInt64?
    private var lastFaultGeneration: UInt64?
    private var repeatedFaults = 0

    init(index: Int, vcpu: VCPU, events: EventLog, handlers: ExitHandlers) {
        self.index = index
        self.vcpu = vcpu
        self.events = events
        self.exitHandlers = handlers
        self.statistics = try? vcpu.statistics()
    }

    // MARK: Thread

    /// vCPU threads are named this and their index (`/proc/PID/task/TID/comm`).
    public static let threadNamePrefix = "vmscope/vcpu "

    func start() {
        _ = installKickHandler
        cond.withLock { threadRunning = true }
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
        cond.withLock { thread = tid }
    }

    /// Stops the thread and waits for it.
    func stopAndJoin() {
        let t = cond.withLock {
            stopRequested = true
            cond.broadcast()
            return thread
        }
        kick()
        if let t { pthread_join(t, nil) }
        cond.withLock { thread = nil }
    }

    /// Makes a `KVM_RUN` in progress return (`immediate_exit` plus a signal to the thread).
    private func kick() {
        vcpu.requestImmediateExit(true)
        if let t = cond.withLock({ thread }) { pthread_kill(t, kickSignal) }
    }

    private func setState(_ new: VCPURunState, _ reason: String) {
        // Caller holds cond.
        guard state != new else { return }
        state = new
        errorDetail = new == .error ? reason : nil
        cond.broadcast()
        events.append(.vcpuStateChanged(index: index, state: new, reason: reason))
    }

    /// Runs the queued requests, without `cond` held (they may take other locks), until none is left.
    private func runRequests() {
        while true {
            let batch: [() -> Void] = cond.withLock {
                defer { requests.removeAll() }
                return requests
            }
            if batch.isEmpty { return }
            for r in batch { r() }
        }
    }

    private enum Next { case run, stop, again }

    /// Whether the vCPU runs now, stops, or (after a wait) looks again. Caller holds `cond`.
    private func nextStep() -> Next {
        if !requests.isEmpty { return .again }
        if stopRequested {
            threadRunning = false
            cond.broadcast()
            return .stop
        }
        if (pauseRequested && steps == 0) || state == .halted || state == .shutdown || state == .error || state == .faultStopped {
            if state == .running { setState(.paused, "pause requested") }
            cond.wait()
            return .again
        }
        if steps > 0 { steps -= 1 }
        setState(.running, pauseRequested ? "step" : "resumed")
        vcpu.requestImmediateExit(false)
        return .run
    }

    private func loop() {
        handlers = exitHandlers.freeze()
        cond.withLock { threadID = ckvm_gettid() }
        while true {
            runRequests()
            switch cond.withLock({ nextStep() }) {
            case .again: continue
            case .stop: return
            case .run: break
            }
            do {
                let exit = try vcpu.run()
                dispatch(exit)
            } catch {
                cond.withLock {
                    lastExit = "error"
                    setState(.error, error.description)
                }
            }
        }
    }

    // MARK: Control from other threads

    func requestPause() {
        cond.withLock {
            pauseRequested = true
            steps = 0
        }
        kick()
    }

    func requestResume() { release(pausing: false, steps: 0) }

    func requestStep() { release(pausing: true, steps: 1) }

    /// Lets the vCPU go on (out of a fault stop or a halt too): running, or for `steps` steps and then paused.
    private func release(pausing: Bool, steps: Int) {
        cond.withLock {
            pauseRequested = pausing
            self.steps = steps
            if state == .faultStopped { resumeFault = true }
            if state == .halted { state = .paused }
            cond.broadcast()
        }
    }

    /// Wakes a halted vCPU (an NMI or #MC is pending for it).
    func wakeIfHalted() {
        cond.withLock {
            if state == .halted { state = .paused; cond.broadcast() }
        }
    }

    var currentState: VCPURunState { cond.withLock { state } }

    /// Waits until the state is one of `states`, at most `timeout` seconds.
    func wait(for states: Set<VCPURunState>, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        return cond.withLock {
            while !states.contains(state) {
                if !cond.wait(until: deadline) { return states.contains(state) }
            }
            return true
        }
    }

    /// Runs `body` on the vCPU thread between two runs (or here, when the thread is not running).
    func perform<T: Sendable>(timeout: TimeInterval = 2, _ body: @escaping @Sendable (VCPU) throws(KVMError) -> T)
        throws(VMMError) -> T
    {
        let slot = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        let vcpu = self.vcpu
        let queued = cond.withLock {
            guard threadRunning && thread != nil else { return false }
            requests.append {
                do throws(KVMError) { slot.result = .success(try body(vcpu)) } catch { slot.result = .failure(error) }
                done.signal()
            }
            cond.broadcast()
            return true
        }
        if !queued {
            do { return try body(vcpu) } catch { throw VMMError.kvm(error) }
        }
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
        let reused = cond.withLock {
            state == .running ? lastRegisters.flatMap { now &- $0.atNs < Self.registerReuseNs ? $0.pair : nil } : nil
        }
        if withRegisters, let both = reused ?? (try? perform({ v throws(KVMError) in
            RegisterPair(regs: try v.registers(), sregs: try v.specialRegisters())
        })) {
            // One request: the vCPU thread is interrupted once for both register sets.
            regs = both.regs
            sregs = both.sregs
            if reused == nil {
                cond.withLock { lastRegisters = state == .running ? (both, now) : nil }
            }
        }
        let stats = (try? statistics?.readScalars()) ?? [:]
        return cond.withLock {
            VCPUSnapshot(index: index, threadID: threadID, state: state, lastExit: lastExit,
                         exitCounts: exitCounts, guest: counters, registers: regs, specialRegisters: sregs,
                         statistics: stats, errorDetail: errorDetail)
        }
    }

    var guestCounters: GuestCounters { cond.withLock { counters } }

    // MARK: Exits

    private func dispatch(_ exit: VCPUExit) {
        if case .interrupted = exit {
            cond.withLock { exitCounts["INTR", default: 0] += 1 }
            return
        }
        let name = exit.reason.name
        cond.withLock {
            exitCounts[name, default: 0] += 1
            lastExit = name
        }
        for h in handlers where h.handle(exit, on: self) { return }
        unhandled(exit)
    }

    /// What an exit no handler took means for the vCPU.
    private func unhandled(_ exit: VCPUExit) {
        cond.withLock {
            switch exit {
            case .ioOut:
                exitCounts["IO unassigned port", default: 0] += 1
            case .ioIn(_, _, _, let buffer):
                buffer.fillAllOnes()
            case .mmioRead(_, let buffer):
                buffer.fillAllOnes()
            case .hlt:
                setState(.halted, "HLT")
            case .shutdown:
                setState(.shutdown, "KVM_EXIT_SHUTDOWN (triple fault)")
            case .systemEvent(let type, _):
                setState(.shutdown, "KVM_EXIT_SYSTEM_EVENT type \(type)")
            case .internalError(let suberror, let data):
                setState(.error, "KVM_EXIT_INTERNAL_ERROR suberror \(suberror) (\(VCPUExit.internalErrorName(suberror)))"
                         + " data [\(data.map { hex($0) }.joined(separator: ", "))]")
            case .failEntry(let reason, _):
                setState(.error, "KVM_EXIT_FAIL_ENTRY reason \(hex(reason))")
            case .memoryFault(let f):
                setState(.error, "KVM_EXIT_MEMORY_FAULT at \(hex(f.gpa)) with no handler")
            case .hypercall(let call):
                setState(.error, "KVM_EXIT_HYPERCALL \(call.number) with no handler")
            case .mmioWrite, .debug, .interrupted:
                break
            case .other(let reason):
                setState(.error, "unhandled exit \(reason.name)")
            }
        }
    }

    // MARK: VCPUContext (the vCPU thread's handlers)

    func updateGuestCounters(_ body: (inout GuestCounters) -> Void) {
        cond.withLock { body(&counters) }
    }

    func countRelayoutRetry() {
        cond.withLock { counters.relayoutRetries += 1 }
    }

    /// Called on the vCPU thread by the pause policy: stops until resumed (or stopped). True when resumed.
    func faultStop(reason: String) -> Bool {
        cond.withLock {
            resumeFault = false
            pauseRequested = true
            setState(.faultStopped, reason)
        }
        while true {
            runRequests()
            let resumed: Bool? = cond.withLock {
                guard resumeFault || stopRequested else {
                    if requests.isEmpty { cond.wait() }
                    return nil
                }
                let resumed = resumeFault
                resumeFault = false
                if resumed { setState(.paused, "resumed from fault") }
                return resumed
            }
            if let resumed { return resumed }
        }
    }

    /// Guards against a fault repeating forever at one GPA (kernel exits, instruction fetches). True when it has
    /// repeated too often with nothing but this vCPU changing the memory layout in between: an operator converting
    /// the guest's code back and forth (a legitimate storm of exec faults) restarts the count, a conversion that does
    /// not help does not.
    func noteRepeatedFault(gpa: UInt64, generation: UInt64) -> Bool {
        if lastFaultGPA == gpa && lastFaultGeneration == generation { repeatedFaults += 1 } else { lastFaultGPA = gpa; repeatedFaults = 1 }
        lastFaultGeneration = generation
        return repeatedFaults > 16
    }

    func noteResolved(generation: UInt64) { lastFaultGeneration = generation }

    func stopWithError(_ reason: String) {
        cond.withLock { setState(.error, reason) }
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
