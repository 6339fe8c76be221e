import KVM
import Schema

/// `KVM_EXIT_MEMORY_FAULT` (kernel engine, or any kernel that reports one).
///
/// The record keeps the kernel's `flags`, `gpa`, `size` and errno verbatim. Its `private` is the direction the
/// access wanted: on the kernel engine's layout that is the view the guest used (the private view's GPAs, or the
/// shared alias), because a `KVM_X86_SW_PROTECTED_VM` guest cannot say it and the kernel's PRIVATE bit reports the
/// attribute the access met (docs/attribute-engines.md). Elsewhere it is the kernel's bit.
final class KernelFaultHandler: ExitHandler {
    let core: VMCore

    init(core: VMCore) { self.core = core }

    func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool {
        guard case .memoryFault(let f) = exit else { return false }
        let memory = core.memory
        let (c, context, generation) = memory.withLock {
            let c = memory.classify(f.gpa)
            return (c, memory.faultContext(gfn: c?.gfn), memory.generation)
        }
        let wantsPrivate = c?.privateView ?? f.isPrivate
        let record = FaultRecord(timeNs: HostClock.monotonicNs(), vcpu: vcpu.index, gpa: f.gpa, size: f.size,
                                 flags: f.flags, isPrivate: wantsPrivate, access: .unknown,
                                 errno: f.errno.name, source: .kernel, exit: .memoryFault,
                                 attribute: context.attribute, slot: context.slot, action: .reported)
        let unknownFlags = f.flags & ~MemoryFaultExit.flagPrivate
        guard unknownFlags == 0, let c, !vcpu.noteRepeatedFault(gpa: f.gpa, generation: generation) else {
            core.faults.append(record)
            vcpu.stopWithError(unknownFlags != 0 ? "KVM_EXIT_MEMORY_FAULT with unknown flags \(hex(unknownFlags))"
                               : c == nil ? "KVM_EXIT_MEMORY_FAULT outside RAM at \(hex(f.gpa))"
                               : "KVM_EXIT_MEMORY_FAULT repeated at \(hex(f.gpa))")
            return true
        }
        // The RAM pages the fault names, in the private view's GPAs: what an implicit conversion converts.
        let first = c.ramOffset / 4096
        let last = min(memory.pageCount, (c.ramOffset &+ max(f.size, 1) &+ 4095) / 4096)
        let pages = first..<max(last, first + 1)
        if core.isResolved(pages: pages, toPrivate: wantsPrivate) {
            // The view the access wanted is mapped (again): the access met a memslot being re-laid by a conversion
            // elsewhere, not a wrong view. KVM retries it on the next run; no record, as on the vmm engine.
            vcpu.countRelayoutRetry()
            return true
        }
        let reason = "KVM_EXIT_MEMORY_FAULT at \(hex(f.gpa)) (\(wantsPrivate ? "private" : "shared") access, page is \(context.attribute))"
        core.applyPolicy(record, pages: pages, toPrivate: wantsPrivate, vcpu: vcpu, reason: reason)
        vcpu.noteResolved(generation: memory.withLock { memory.generation })
        return true
    }
}
