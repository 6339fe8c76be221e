import KVM
import Synchronization

/// What an exit handler may do to the vCPU whose exit it handles, on that vCPU's thread.
public protocol VCPUContext: AnyObject {
    var index: Int { get }
    /// The vCPU itself: its registers, and what the next `KVM_RUN` gives the guest (a hypercall's result).
    var vcpu: VCPU { get }
    /// Counts an exit that turned out to be no fault: the view was mapped again by the time it was handled.
    func countRelayoutRetry()
    /// Stops the vCPU until an operator resumes it (or the VMM stops); true when resumed. Called by the pause policy.
    func faultStop(reason: String) -> Bool
    /// Guards against a fault repeating forever at one GPA (kernel exits, instruction fetches): true when it has
    /// repeated too often with the memory layout as this vCPU left it (`generation`, the memslot generation now). A
    /// layout someone else changed since (an operator converting the page back) starts the count again.
    func noteRepeatedFault(gpa: UInt64, generation: UInt64) -> Bool
    /// The memslot generation after this vCPU resolved its fault: the layout its next fault is compared with.
    func noteResolved(generation: UInt64)
    /// Puts the vCPU in state `error` with `reason`.
    func stopWithError(_ reason: String)
    /// Updates what the built-in guest reported (`query-vcpus`' `guest`).
    func updateGuestCounters(_ body: (inout GuestCounters) -> Void)
}

/// One kind of exit the VMM handles: one type per kind (docs/architecture.md, "A new exit"), registered in the
/// order the runner asks them.
public protocol ExitHandler: AnyObject, Sendable {
    /// Handles `exit` on the vCPU's thread, or returns false when the exit is not this handler's (the next one is
    /// asked; when none takes it, the runner does what KVM's exit means for the vCPU's state). Never blocks on a
    /// reader: records and events go to bounded rings.
    func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool
}

/// The handlers every vCPU asks, in order: those registered through `ReferenceVMM.register(exitHandler:)` first,
/// then the built-in ones. Fixed once the vCPUs start.
final class ExitHandlers: Sendable {
    private let state: Mutex<(added: [any ExitHandler], builtIn: [any ExitHandler], frozen: Bool)>

    init(builtIn: [any ExitHandler]) { state = Mutex(([], builtIn, false)) }

    /// Adds `handler` before the built-in ones; false once the vCPUs have started.
    func register(_ handler: any ExitHandler) -> Bool {
        state.withLock { s in
            guard !s.frozen else { return false }
            s.added.append(handler)
            return true
        }
    }

    /// The list a vCPU thread dispatches through; no handler is added after the first call.
    func freeze() -> [any ExitHandler] {
        state.withLock { s in
            s.frozen = true
            return s.added + s.builtIn
        }
    }
}
