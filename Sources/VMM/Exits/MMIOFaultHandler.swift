import KVM
import Schema

/// `KVM_EXIT_MMIO`: a vmm-engine memory fault when the GPA is RAM (an access through the view its page is not in,
/// which has no memslot), handled by the fault policy; an ordinary MMIO access otherwise (reads give all ones).
final class MMIOFaultHandler: ExitHandler {
    let core: VMCore

    init(core: VMCore) { self.core = core }

    func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool {
        switch exit {
        case .mmioRead(let address, let buffer):
            access(vcpu, address: address, read: buffer, write: nil)
        case .mmioWrite(let address, let data):
            access(vcpu, address: address, read: nil, write: data)
        default:
            return false
        }
        return true
    }

    private func access(_ vcpu: any VCPUContext, address: UInt64, read: UnsafeMutableRawBufferPointer?,
                        write: UnsafeRawBufferPointer?) {
        let entered = HostClock.monotonicNs()
        let memory = core.memory
        guard let c = memory.classify(address) else {
            read?.fillAllOnes()
            return
        }
        var resumed = false
        while true {
            let policy = resumed ? .convert : core.faultPolicy
            let outcome = memory.withLock {
                fault(vcpu, c, address: address, read: read, write: write, policy: policy, enteredNs: resumed ? nil : entered)
            }
            switch outcome {
            case .done:
                return
            case .retried:
                vcpu.countRelayoutRetry()
                return
            case .paused(let reason):
                // Stopped outside the lock; on resume the access is converted and completed.
                guard vcpu.faultStop(reason: reason) else {
                    read?.fillAllOnes()
                    return
                }
                resumed = true
            }
        }
    }

    private enum Outcome { case done, retried, paused(String) }

    /// One look at the faulting access under the memory lock (the caller holds it): completed when its view is mapped
    /// again; else a record, and what `policy` does. `enteredNs`: when the exit handler began, to record what the
    /// fault cost the vCPU thread (nil after a pause, whose wait would count).
    private func fault(_ vcpu: any VCPUContext, _ c: GPAClassification, address: UInt64, read: UnsafeMutableRawBufferPointer?,
                       write: UnsafeRawBufferPointer?, policy: FaultPolicy, enteredNs: UInt64?) -> Outcome {
        let memory = core.memory
        let gfn = c.gfn
        let attrPrivate = memory.attributes.isPrivate(gfn: gfn)
        if attrPrivate == c.privateView && !memory.isRevoked(gfn: gfn) {
            // The view is mapped again (a relayout raced with this access): complete it, no fault.
            complete(c, read: read, write: write)
            return .retried
        }
        let context = memory.faultContext(gfn: gfn)
        var record = FaultRecord(
            timeNs: HostClock.monotonicNs(), vcpu: vcpu.index, gpa: address & ~0xFFF, size: 4096,
            flags: c.privateView ? FaultRecord.flagPrivate : 0, isPrivate: c.privateView,
            access: write != nil ? .write : .read, errno: nil, source: .vmm, exit: .mmio,
            attribute: context.attribute, slot: context.slot, action: .reported)
        func emitted(conversionNs: UInt64) {
            guard let enteredNs else { return }
            core.faultEmitCost.append { _ in HostClock.monotonicNs() &- enteredNs &- conversionNs }
        }
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
                    let result = try core.countedConvert(gpa: gfn * 4096, size: 4096, toPrivate: c.privateView,
                                                         discard: true, cause: .implicit)
                    record.action = .known(.converted)
                    followUp = core.conversionEvents(result, gpa: gfn * 4096, size: 4096, toPrivate: c.privateView,
                                                     cause: .implicit, vcpu: vcpu.index)
                }
            } catch {
                record.action = .known(.reported)
                core.logger.warning("implicit conversion failed", metadata: ["gpa": "\(hex(address))", "error": "\(error)"])
            }
            let conversionNs = HostClock.monotonicNs() &- converting
            core.faults.append(record)
            emitted(conversionNs: conversionNs)
            if record.action == .reported {
                read?.fillAllOnes()
            } else {
                complete(c, read: read, write: write)
            }
            core.logEvents(followUp)
            return .done
        case .report:
            core.faults.append(record)
            emitted(conversionNs: 0)
            read?.fillAllOnes()
            return .done
        case .pause:
            record.action = .known(.paused)
            core.faults.append(record)
            return .paused("memory fault at \(hex(address)) (\(c.privateView ? "private" : "shared") access, page is \(record.attribute))")
        }
    }

    /// Performs the access of an MMIO exit against the backing of the view it used. Caller holds the memory lock.
    private func complete(_ c: GPAClassification, read: UnsafeMutableRawBufferPointer?, write: UnsafeRawBufferPointer?) {
        let memory = core.memory
        guard let p = memory.hostPointer(ramOffset: c.ramOffset, privateView: c.privateView) else {
            read?.fillAllOnes()
            return
        }
        let room = Int(memory.ramSize - c.ramOffset)
        if let read, let base = read.baseAddress { base.copyMemory(from: p, byteCount: min(read.count, room)) }
        if let write, let base = write.baseAddress { p.copyMemory(from: base, byteCount: min(write.count, room)) }
    }
}

extension UnsafeMutableRawBufferPointer {
    /// What a read from nothing returns on x86: all ones.
    func fillAllOnes() { if let base = baseAddress { base.initializeMemory(as: UInt8.self, repeating: 0xFF, count: count) } }
}
