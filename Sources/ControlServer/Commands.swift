import ControlProtocol
import Foundation
import VMM

/// `read-memory`'s `view` argument.
enum ReadView: String, CaseIterable { case `private`, shared, auto }

/// The control protocol's commands, each mapped onto the VMM's Swift API.
struct CommandTable {
    let vmm: ReferenceVMM

    typealias Handler = (ReferenceVMM, inout Arguments) throws(CommandError) -> JSON

    /// Every command after negotiation, in `query-commands` order.
    static let names = [
        "qmp_capabilities", "query-commands", "query-version", "query-vm", "query-memslots",
        "query-memory-attributes", "set-memory-attributes", "query-vcpus", "query-memory-faults", "vcpu-control",
        "inject-fault", "read-memory", "set-fault-policy", "query-snapshot",
    ]

    /// Commands that change the VM or read its memory: each is logged as an audit line with the client's pid
    /// and uid, whether it was done or refused.
    static let audited: Set<String> = ["set-memory-attributes", "vcpu-control", "inject-fault", "set-fault-policy", "read-memory"]

    static func vmmError(_ e: VMMError) -> CommandError {
        let c: QMP.ErrorClass = switch e.errorClass {
        case .genericError: .genericError
        case .permissionDenied: .permissionDenied
        case .invalidRange: .invalidRange
        case .unsupported: .unsupported
        }
        return CommandError(c, e.description)
    }

    /// Runs `name`; the caller has handled negotiation.
    func run(_ name: String, _ arguments: JSON?) throws(CommandError) -> JSON {
        var args = try Arguments(arguments)
        return try dispatch(name, &args)
    }

    /// A VMM call, its refusal turned into the reply's error.
    private func v<T>(_ body: () throws(VMMError) -> T) throws(CommandError) -> T {
        do { return try body() } catch { throw Self.vmmError(error) }
    }

    private func vmObject() -> JSON {
        let c = vmm.configuration
        return .object([
            ("name", .string(c.name)), ("pid", .i(Int(getpid()))), ("vm-type", .u(UInt64(vmm.decision.vmType.rawValue))),
            ("attribute-engine", .string(vmm.engineKind.rawValue)),
            (Wire.sharedAlias.name, .opt(vmm.sharedAlias.map { .i($0.trailingZeroBitCount) })),
            ("ram-size", .u(c.ramSize)), ("vcpus", .i(vmm.vcpuCount)),
            ("mutations-allowed", .bool(c.allowMutations)), ("fault-injection-allowed", .bool(c.allowFaultInjection)),
            ("memory-reads-allowed", .bool(c.allowMemoryReads)),
            (Wire.faultPolicy.name, .string(vmm.faultPolicy.rawValue)),
            ("kvm-capabilities", Encode.capabilities(vmm.capabilities)),
        ])
    }

    private func dispatch(_ name: String, _ a: inout Arguments) throws(CommandError) -> JSON {
        func args<T>(_ body: (inout Arguments) throws(CommandError) -> T) throws(CommandError) -> T { try body(&a) }
        switch name {
        case "query-commands":
            try a.finish()
            return .array(Self.names.map { .object([("name", .string($0))]) })
        case "query-version":
            try a.finish()
            return QMP.versionObject
        case "query-vm":
            try a.finish()
            return vmObject()
        case "query-snapshot":
            let limit = try args { a throws(CommandError) in
                let l = try a.optionalInt("faults", in: 0...vmm.faults.capacity) ?? 256
                try a.finish()
                return l
            }
            let state = vmm.captureState(faultLimit: limit)
            return .object([
                ("vm", vmObject()),
                ("memslots", .array(state.memslots.map(Encode.memslot))),
                ("attributes", Encode.attributes(state.attributes)),
                ("faults", Encode.faults(state.faults, total: state.faultsTotal, dropped: state.faultsDropped)),
                ("vcpus", .array(vmm.vcpus().map(Encode.vcpu))),
            ])
        case "query-memslots":
            try a.finish()
            return .array(vmm.memslots.map(Encode.memslot))
        case "query-memory-attributes":
            let (gpa, size) = try args { a throws(CommandError) in
                let r = (try a.optionalUInt64("gpa"), try a.optionalUInt64("size"))
                try a.finish()
                return r
            }
            guard (gpa == nil) == (size == nil) else { throw CommandError(.genericError, "give both gpa and size, or neither") }
            return Encode.attributes(try v { () throws(VMMError) in try vmm.queryMemoryAttributes(gpa: gpa, size: size) })
        case "set-memory-attributes":
            let (gpa, size, toPrivate, discard) = try args { a throws(CommandError) in
                let r = (try a.uint64("gpa"), try a.uint64("size"), try a.bool("private"), try a.optionalBool("discard") ?? true)
                try a.finish()
                return r
            }
            let r = try v { () throws(VMMError) in
                try vmm.setMemoryAttributes(gpa: gpa, size: size, toPrivate: toPrivate, discard: discard)
            }
            return .object([("runs-changed", .i(r.runsChanged)), (Wire.durationNs.name, .u(r.durationNs))])
        case "query-vcpus":
            try a.finish()
            return .array(vmm.vcpus().map(Encode.vcpu))
        case "query-memory-faults":
            let limit = try args { a throws(CommandError) in
                let l = try a.optionalInt("limit", in: 0...vmm.faults.capacity) ?? 256
                try a.finish()
                return l
            }
            return Encode.faults(vmm.faults.recent(limit), total: vmm.faults.total, dropped: vmm.faults.dropped)
        case "vcpu-control":
            let (index, action) = try args { a throws(CommandError) in
                let r = (try a.optionalInt("index", in: 0...Int(Int32.max)), try a.enumeration("action", VCPUAction.self))
                try a.finish()
                return r
            }
            let states = try v { () throws(VMMError) in try vmm.vcpuControl(index: index, action: action) }
            let indices = index.map { [$0] } ?? Array(0..<vmm.vcpuCount)
            return .object([("vcpus", .array(zip(indices, states).map {
                .object([("index", .i($0.0)), ("state", .string($0.1.rawValue))])
            }))])
        case "inject-fault":
            let (kind, vcpu, gpa, size) = try args { a throws(CommandError) in
                let r = (try a.enumeration("kind", InjectionKind.self), try a.optionalInt("vcpu", in: 0...Int(Int32.max)),
                         try a.optionalUInt64("gpa"), try a.optionalUInt64("size"))
                try a.finish()
                return r
            }
            return Encode.injection(try v { () throws(VMMError) in
                try vmm.injectFault(kind: kind, vcpu: vcpu, gpa: gpa, size: size)
            })
        case "read-memory":
            let (gpa, size, view) = try args { a throws(CommandError) in
                let r = (try a.uint64("gpa"), try a.uint64("size"), try a.optionalEnum("view", ReadView.self) ?? .auto)
                try a.finish()
                return r
            }
            let privateView: Bool? = switch view { case .private: true; case .shared: false; case .auto: nil }
            let r = try v { () throws(VMMError) in try vmm.readMemory(gpa: gpa, size: size, privateView: privateView) }
            // `private` says the view when every byte came through one; a read across a boundary (`auto` only)
            // has `private: null` and `views`, the runs read through each.
            var reply: [(String, JSON)] = [("data", .string(Data(r.bytes).base64EncodedString()))]
            if r.views.count == 1 {
                reply.append(("private", .bool(r.views[0].isPrivate)))
            } else {
                reply.append(("private", .null))
                reply.append(("views", .array(r.views.map {
                    .object([("offset", .u($0.offset)), ("size", .u($0.size)), ("private", .bool($0.isPrivate))])
                })))
            }
            return .object(reply)
        case "set-fault-policy":
            let policy = try args { a throws(CommandError) in
                let p = try a.enumeration("policy", FaultPolicy.self)
                try a.finish()
                return p
            }
            try v { () throws(VMMError) in try vmm.setFaultPolicy(policy) }
            return .object([])
        default:
            throw CommandError(.commandNotFound, "The command \(name) has not been found")
        }
    }
}

