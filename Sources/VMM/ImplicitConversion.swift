import Schema

/// The fault policy for faults the vCPU retries by itself (a kernel memory-fault exit, an instruction fetch): the
/// handlers of both exits end here.
extension VMCore {
    /// Whether `pages` already are what an access wanting `toPrivate` needs (attribute, and mapped).
    func isResolved(pages: Range<UInt64>, toPrivate: Bool) -> Bool {
        memory.withLock {
            memory.attributes.isUniform(pages: pages, private: toPrivate) && !memory.anyRevoked(pages: pages)
        }
    }

    enum Resolution { case converted, remapped, alreadyDone, failed(String) }

    /// Gives a faulting access what it wanted: converts `pages` implicitly, or maps revoked pages back.
    func resolveImplicitly(pages: Range<UInt64>, toPrivate: Bool, vcpu: Int) -> Resolution {
        memory.withLock {
            do throws(VMMError) {
                if memory.attributes.isUniform(pages: pages, private: toPrivate) {
                    guard memory.anyRevoked(pages: pages) else { return .alreadyDone }
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
    }

    /// `convert` resolves the fault now, `pause` stops the vCPU and resolves it on resume, `report` keeps the vCPU
    /// on the access.
    func applyPolicy(_ r: FaultRecord, pages: Range<UInt64>, toPrivate: Bool, vcpu: any VCPUContext, reason: String) {
        var record = r
        switch faultPolicy {
        case .convert:
            switch resolveImplicitly(pages: pages, toPrivate: toPrivate, vcpu: vcpu.index) {
            case .alreadyDone:
                vcpu.countRelayoutRetry()   // resolved by someone else since the check: no fault of its own
            case .converted:
                record.action = .known(.converted)
                faults.append(record)
            case .remapped:
                record.action = .known(.remapped)
                faults.append(record)
            case .failed(let why):
                faults.append(record)
                vcpu.stopWithError("implicit conversion failed: \(why) (\(reason))")
            }
        case .pause:
            record.action = .known(.paused)
            faults.append(record)
            if vcpu.faultStop(reason: reason) { _ = resolveImplicitly(pages: pages, toPrivate: toPrivate, vcpu: vcpu.index) }
        case .report:
            // Retried on the next KVM_RUN, the access can only fault again: the vCPU stays on it until someone
            // converts the page (or changes the policy) and resumes it.
            faults.append(record)
            _ = vcpu.faultStop(reason: reason + ", policy report: waiting on the access")
        }
    }
}
