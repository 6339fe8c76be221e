import KVM
import Schema

/// `KVM_EXIT_HYPERCALL` for `KVM_HC_MAP_GPA_RANGE` (args gpa, pages, attributes): the guest's own conversion
/// request. The result goes to the guest's RAX on the next `KVM_RUN`: 0, or a negative errno.
final class HypercallHandler: ExitHandler {
    let core: VMCore

    init(core: VMCore) { self.core = core }

    func handle(_ exit: VCPUExit, on vcpu: any VCPUContext) -> Bool {
        guard case .hypercall(let call) = exit else { return false }
        vcpu.updateGuestCounters { $0.hypercallRequests += 1 }
        vcpu.vcpu.setHypercallResult(result(of: call, vcpu: vcpu.index))
        return true
    }

    /// What the guest's RAX gets: a negative errno is returned as its two's complement, as KVM returns them.
    private static func failure(_ errno: Errno) -> UInt64 { UInt64(bitPattern: Int64(-errno.rawValue)) }

    private func result(of call: Hypercall, vcpu: Int) -> UInt64 {
        guard call.number == Hypercall.mapGPARange, call.args.count >= 3 else { return Self.failure(.noFunction) }
        let attrs = call.args[2]
        let pageSizes: [UInt64] = [4096, 2 << 20, 1 << 30]
        let sizeCode = Int(attrs & 0xF)
        guard attrs & ~0x1F == 0, sizeCode < pageSizes.count else { return Self.failure(.invalidArgument) }
        let (size, overflow) = call.args[1].multipliedReportingOverflow(by: pageSizes[sizeCode])
        guard !overflow else { return Self.failure(.invalidArgument) }
        do {
            _ = try core.convert(gpa: call.args[0], size: size, toPrivate: attrs & 0x10 != 0, discard: true,
                                 cause: .guestRequest, vcpu: vcpu)
            return 0
        } catch {
            return Self.failure(.invalidArgument)
        }
    }
}
