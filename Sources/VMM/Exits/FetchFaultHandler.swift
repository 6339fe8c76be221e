import KVM
import Schema

/// An emulation failure (`KVM_EXIT_INTERNAL_ERROR`, suberror EMULATION) while the vCPU was fetching its next
/// instruction from a RAM page whose view has no memslot (the vmm engine's wrong-view case): a memory fault with
/// access `exec`, handled by the policy like a data access. Without paging (the built-in guest) the fetch address
/// is CS.base + RIP; the instruction may straddle into the next page. KVM re-runs the instruction on the next
/// `KVM_RUN` (RIP has not moved), so a conversion lets it proceed. Any other internal error is declined (the runner
/// puts the vCPU in `error` with the exit's data).
final class FetchFaultHandler: ExitHandler {
    let core: VMCore

    init(core: VMCore) { self.core = core }

    func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool {
        guard case .internalError(let suberror, _) = exit, suberror == VCPUExit.emulationFailure else { return false }
        return fetchFault(vcpu)
    }

    private func fetchFault(_ vcpu: any VCPUContext) -> Bool {
        guard let regs = try? vcpu.vcpu.registers(), let sregs = try? vcpu.vcpu.specialRegisters(),
              sregs.cr0 & 0x8000_0000 == 0 else { return false }   // with paging the fetch address is virtual
        let memory = core.memory
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
        let generation = memory.withLock { memory.generation }
        let hit: (gpa: UInt64, c: GPAClassification, access: FaultAccess)? = memory.withLock {
            for (gpa, access) in candidates {
                guard let c = memory.classify(gpa) else { continue }
                if memory.attributes.isPrivate(gfn: c.gfn) != c.privateView || memory.isRevoked(gfn: c.gfn) {
                    return (gpa, c, access)
                }
            }
            return nil
        }
        guard let (gpa, c, access) = hit else {
            // No such page now; another vCPU may have converted or remapped it since this exit: re-run. An
            // emulation failure with another cause repeats at the same place and is then reported as it is.
            if vcpu.noteRepeatedFault(gpa: linear | 1, generation: generation) { return false }
            vcpu.countRelayoutRetry()
            return true
        }
        let what = access == .exec ? "instruction fetch" : "implicit access"
        if vcpu.noteRepeatedFault(gpa: gpa & ~0xFFF, generation: generation) {
            vcpu.stopWithError("\(what) at \(hex(gpa)) keeps faulting after the page was converted")
            return true
        }
        let context = memory.withLock { memory.faultContext(gfn: c.gfn) }
        let page = c.gfn..<(c.gfn + 1)
        if core.isResolved(pages: page, toPrivate: c.privateView) {
            // Another vCPU converted the page between this exit and now: re-run, no record.
            vcpu.countRelayoutRetry()
            return true
        }
        let record = FaultRecord(
            timeNs: HostClock.monotonicNs(), vcpu: vcpu.index, gpa: gpa & ~0xFFF, size: 4096,
            flags: c.privateView ? FaultRecord.flagPrivate : 0, isPrivate: c.privateView, access: access, errno: nil,
            source: .vmm, exit: .internalError, attribute: context.attribute, slot: context.slot, action: .reported)
        let reason = "\(what) at \(hex(gpa)) (\(c.privateView ? "private" : "shared") view, page is \(context.attribute))"
        // KVM re-runs the instruction: whatever the policy, nothing is completed here.
        core.applyPolicy(record, pages: page, toPrivate: c.privateView, vcpu: vcpu, reason: reason)
        vcpu.noteResolved(generation: memory.withLock { memory.generation })
        return true
    }
}
