import ControlProtocol
import Foundation
import VMM

/// The control protocol's commands, each read into its schema type and mapped onto the VMM's Swift API; replies
/// are schema values, encoded by the schema.
struct CommandTable {
    let vmm: ReferenceVMM

    static func vmmError(_ e: VMMError) -> CommandError { CommandError(e.errorClass, e.description, errno: e.errno?.name) }

    /// Runs `name`; the caller has handled negotiation.
    func run(_ name: String, _ arguments: JSON?) throws(CommandError) -> JSON {
        guard let command = CommandName(rawValue: name) else {
            throw CommandError(.commandNotFound, "The command \(name) has not been found")
        }
        var args = try Arguments(arguments)
        return try dispatch(command, &args)
    }

    /// A VMM call, its refusal turned into the reply's error.
    private func v<T>(_ body: () throws(VMMError) -> T) throws(CommandError) -> T {
        do { return try body() } catch { throw Self.vmmError(error) }
    }

    private func dispatch(_ command: CommandName, _ a: inout Arguments) throws(CommandError) -> JSON {
        switch command {
        case .qmpCapabilities:
            throw CommandError(.commandNotFound, "Capabilities negotiation is already complete, command ignored")
        case .setEvents:
            // The connection's own: the server runs it (ControlServer.processMessage), never the VM's table.
            throw CommandError(.genericError, "set-events is about a connection, and none is here")
        case .queryCommands:
            _ = try QueryCommands(&a)
            return QueryCommands.Names(CommandName.allCases.map(\.rawValue)).json
        case .queryVersion:
            try a.finish()
            return QMP.versionObject
        case .queryVM:
            _ = try QueryVM(&a)
            return Encode.vm(vmm).json
        case .querySnapshot:
            let q = try QuerySnapshot(&a, capacity: vmm.faults.capacity)
            let state = vmm.captureState(faultLimit: q.faults ?? 256)
            return StateSnapshot(
                vm: Encode.vm(vmm), memslots: MemslotList(state.memslots.map(Encode.memslot)), attributes: state.attributes,
                faults: FaultList(records: state.faults, total: state.faultsTotal, dropped: state.faultsDropped),
                vcpus: VCPUList(vmm.vcpus().map(Encode.vcpu))).json
        case .queryMemslots:
            _ = try QueryMemslots(&a)
            return MemslotList(vmm.memslots.map(Encode.memslot)).json
        case .queryMemoryAttributes:
            let q = try QueryMemoryAttributes(&a)
            return try v { () throws(VMMError) in try vmm.queryMemoryAttributes(gpa: q.gpa, size: q.size) }.json
        case .setMemoryAttributes:
            let c = try SetMemoryAttributes(&a)
            let r = try v { () throws(VMMError) in
                try vmm.setMemoryAttributes(gpa: c.gpa, size: c.size, toPrivate: c.toPrivate, discard: c.discard ?? true)
            }
            return SetMemoryAttributes.Conversion(runsChanged: r.runsChanged, durationNs: r.durationNs).json
        case .queryVCPUs:
            _ = try QueryVCPUs(&a)
            return VCPUList(vmm.vcpus().map(Encode.vcpu)).json
        case .queryMetrics:
            let q = try QueryMetrics(&a)
            return vmm.metrics(conversionTimesAfter: q.conversionTimesAfter).json
        case .queryMemoryFaults:
            let q = try QueryMemoryFaults(&a, capacity: vmm.faults.capacity)
            return FaultList(records: vmm.faults.recent(q.limit ?? 256), total: vmm.faults.total, dropped: vmm.faults.dropped).json
        case .vcpuControl:
            let c = try VCPUControl(&a)
            let states = try v { () throws(VMMError) in try vmm.vcpuControl(index: c.index, action: c.action) }
            let indices = c.index.map { [$0] } ?? Array(0..<vmm.vcpuCount)
            return VCPUControl.States(zip(indices, states).map { ($0.0, .known($0.1)) }).json
        case .injectFault:
            let c = try InjectFault(&a)
            return try v { () throws(VMMError) in try vmm.injectFault(kind: c.kind, vcpu: c.vcpu, gpa: c.gpa, size: c.size) }.json
        case .readMemory:
            let c = try ReadMemory(&a)
            let privateView: Bool? = switch c.view ?? .auto { case .private: true; case .shared: false; case .auto: nil }
            let r = try v { () throws(VMMError) in try vmm.readMemory(gpa: c.gpa, size: c.size, privateView: privateView) }
            // `private` says the view when every byte came through one; a read across a boundary (`auto` only)
            // has `private: null` and `views`, the runs read through each.
            return ReadMemory.Bytes(bytes: r.bytes, views: r.views.map { .init(offset: $0.offset, size: $0.size, isPrivate: $0.isPrivate) }).json
        case .setFaultPolicy:
            let c = try SetFaultPolicy(&a)
            try v { () throws(VMMError) in try vmm.setFaultPolicy(c.policy) }
            return Empty().json
        }
    }
}
