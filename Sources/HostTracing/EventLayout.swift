#if canImport(Glibc)
import Glibc
#endif
import KVM
import Schema

/// Where each field of the decoded events lies in a raw record, as the kernel's event formats say (read through
/// libtraceevent by `TraceSession`, or written out in tests). Decoding a record is then a few loads at known offsets:
/// no text, no allocation.
public struct EventLayouts: Sendable, Equatable {
    public struct Field: Sendable, Equatable {
        public var offset: Int
        public var size: Int
        public init(offset: Int, size: Int) { self.offset = offset; self.size = size }
    }

    /// The layouts of kernel 6.18 as this project's machines have them (events/kvm/<event>/format, ids as there):
    /// what tests and benchmarks decode synthetic records with. A test holds it equal to the layouts a real recording
    /// on this machine carries (Tests/HostTracingTests/Fixtures).
    public static let kernel618 = EventLayouts(events: [
        "kvm_userspace_exit": .init(id: 42, fields: ["reason": .init(offset: 8, size: 4), "errno": .init(offset: 12, size: 4)]),
        "kvm_mmio": .init(id: 38, fields: ["type": .init(offset: 8, size: 4), "len": .init(offset: 12, size: 4),
                                           "gpa": .init(offset: 16, size: 8), "val": .init(offset: 24, size: 8)]),
        "kvm_hypercall": .init(id: 114, fields: ["nr": .init(offset: 8, size: 8), "a0": .init(offset: 16, size: 8),
                                                 "a1": .init(offset: 24, size: 8), "a2": .init(offset: 32, size: 8), "a3": .init(offset: 40, size: 8)]),
        "kvm_page_fault": .init(id: 100, fields: ["vcpu_id": .init(offset: 8, size: 4), "guest_rip": .init(offset: 16, size: 8),
                                                  "fault_address": .init(offset: 24, size: 8), "error_code": .init(offset: 32, size: 8)]),
        "kvm_exit": .init(id: 103, fields: ["exit_reason": .init(offset: 8, size: 4), "guest_rip": .init(offset: 16, size: 8),
                                            "isa": .init(offset: 24, size: 4), "info1": .init(offset: 32, size: 8),
                                            "info2": .init(offset: 40, size: 8), "intr_info": .init(offset: 48, size: 4),
                                            "error_code": .init(offset: 52, size: 4), "vcpu_id": .init(offset: 56, size: 4),
                                            "requests": .init(offset: 64, size: 8)]),
    ])

    /// One event's id and its fields by name.
    public struct Event: Sendable, Equatable {
        public var id: Int
        public var fields: [String: Field]
        public init(id: Int, fields: [String: Field]) { self.id = id; self.fields = fields }
        subscript(_ name: String) -> Field? { fields[name] }
    }

    /// The common header every record starts with.
    public var type = Field(offset: 0, size: 2)
    public var pid = Field(offset: 4, size: 4)
    /// By event name (`kvm_userspace_exit`, ...).
    public var events: [String: Event] = [:] { didSet { decoders = Self.decoders(events) } }
    /// What decoding needs of each event, resolved once: by id, in a flat table (ids are small: a few thousand at most
    /// on any kernel); an id past it, or not one of `events`, is `.other`. No name is hashed or compared per record.
    private var decoders: [Decoder?] = []

    public init(events: [String: Event], type: Field = Field(offset: 0, size: 2), pid: Field = Field(offset: 4, size: 4)) {
        self.type = type
        self.pid = pid
        self.events = events
        decoders = Self.decoders(events)
    }

    /// One event's kind and its fields in the order `decode` reads them (a field the format lacks reads as 0): plain
    /// values, so that taking one from the table copies bytes.
    struct Decoder: Sendable {
        enum Kind: UInt8, Sendable { case userspaceExit, mmio, hypercall, pageFault, exit, setMemoryAttributes, ioctlEnter, ioctlExit, kernelPairedFault, other }
        var kind: Kind
        var f: (Field, Field, Field, Field, Field, Field)
        init(kind: Kind, fields: [Field]) {
            self.kind = kind
            let g = fields + [Field](repeating: EventLayouts.missingField, count: max(0, 6 - fields.count))
            f = (g[0], g[1], g[2], g[3], g[4], g[5])
        }
        /// The fields of each kind, by the kernel's names, in the order `decode` reads them.
        static let fieldNames: [String: (Kind, [String])] = [
            "kvm_userspace_exit": (.userspaceExit, ["reason", "errno"]),
            "kvm_mmio": (.mmio, ["type", "len", "gpa", "val"]),
            "kvm_hypercall": (.hypercall, ["nr", "a0", "a1", "a2", "a3"]),
            "kvm_page_fault": (.pageFault, ["vcpu_id", "guest_rip", "fault_address", "error_code"]),
            "kvm_exit": (.exit, ["vcpu_id", "isa", "exit_reason", "guest_rip", "info1", "info2"]),
            "kvm_vm_set_mem_attributes": (.setMemoryAttributes, ["start", "end", "attr"]),
            "sys_enter_ioctl": (.ioctlEnter, ["fd", "cmd"]),
            "sys_exit_ioctl": (.ioctlExit, ["ret"]),
            EventLayouts.kernelPairedFault: (.kernelPairedFault, ["vcpu_id", "gpa", "error_code", "errno", "since_first_ns"]),
            EventLayouts.kernelPairedIoctlResult: (.ioctlExit, ["ret"]),
        ]
    }
    static let missingField = Field(offset: -1, size: 0)
    /// Ids at or past this are not tabled (a hostile layout's): their records decode as `.other`.
    static let tableLimit = 1 << 16

    static func decoders(_ events: [String: Event]) -> [Decoder?] {
        let ids = events.values.map(\.id).filter { $0 >= 0 && $0 < tableLimit }
        var table = [Decoder?](repeating: nil, count: (ids.max() ?? -1) + 1)
        for (name, e) in events where e.id >= 0 && e.id < tableLimit {
            let (kind, names) = Decoder.fieldNames[name] ?? (.other, [])
            table[e.id] = Decoder(kind: kind, fields: names.map { e.fields[$0] ?? missingField })
        }
        return table
    }

    public static func == (a: EventLayouts, b: EventLayouts) -> Bool { a.events == b.events && a.type == b.type && a.pid == b.pid }

    /// The events vmscope decodes, by group. The two system-call events are enabled only beside
    /// `kvm_vm_set_mem_attributes` (they pair each traced conversion with its ioctl's result; without it they
    /// would only add volume), `sys_enter_ioctl` filtered to `KVM_SET_MEMORY_ATTRIBUTES` and `KVM_RUN` (the re-entry that ends a conversion's steps).
    public static let decoded: [(group: String, name: String)] = [
        ("kvm", "kvm_userspace_exit"), ("kvm", "kvm_mmio"), ("kvm", "kvm_hypercall"), ("kvm", "kvm_page_fault"), ("kvm", "kvm_exit"),
        ("kvm", "kvm_vm_set_mem_attributes"), ("syscalls", "sys_enter_ioctl"), ("syscalls", "sys_exit_ioctl"),
    ]
    /// What `trace --paired-only` pairs: conversions (with the ioctl events below) and memory faults.
    public static let pairedEvents = ["kvm_vm_set_mem_attributes", "kvm_page_fault", "kvm_userspace_exit", "kvm_hypercall"]
    /// The synthetic event of memory faults paired in the kernel (`KernelPairing`), by this name in layouts and
    /// raw recordings whatever the session named it in the kernel.
    public static let kernelPairedFault = "vmscope_memory_fault"
    /// The synthetic event of `KVM_SET_MEMORY_ATTRIBUTES` results paired in the kernel (`KernelPairing.ioctlResults`):
    /// decoded as the `sys_exit_ioctl` it stands for.
    public static let kernelPairedIoctlResult = "vmscope_ioctl_result"
    /// The events that only make sense beside `kvm_vm_set_mem_attributes`.
    public static let conversionPairing: Set<String> = ["sys_enter_ioctl", "sys_exit_ioctl"]

    /// An unsigned field read little-endian from `data` (0 when the record is too short for it).
    @inline(__always) static func read(_ f: Field, _ data: UnsafeRawBufferPointer) -> UInt64 {
        guard f.offset >= 0, f.offset <= data.count &- f.size else { return 0 }
        switch f.size {
        case 1: return UInt64(data.load(fromByteOffset: f.offset, as: UInt8.self))
        case 2: return UInt64(UInt16(littleEndian: data.loadUnaligned(fromByteOffset: f.offset, as: UInt16.self)))
        case 4: return UInt64(UInt32(littleEndian: data.loadUnaligned(fromByteOffset: f.offset, as: UInt32.self)))
        case 8: return UInt64(littleEndian: data.loadUnaligned(fromByteOffset: f.offset, as: UInt64.self))
        default: return 0
        }
    }

    /// The record's thread, and its event decoded; nil for a record too short for its header.
    public func decode(_ data: UnsafeRawBufferPointer, cpu: Int32, timeNs: UInt64) -> TraceEvent? {
        guard data.count >= max(type.offset + type.size, pid.offset + pid.size) else { return nil }
        let id = Int(truncatingIfNeeded: Self.read(type, data))  // a hostile layout may give an 8-byte type
        let tid = Int32(truncatingIfNeeded: Self.read(pid, data))
        let table = decoders
        guard id >= 0, id < table.count, let d = table[id] else {
            return TraceEvent(tid: tid, cpu: cpu, timeNs: timeNs, kind: .other(id: id))
        }
        let f = d.f
        @inline(__always) func u(_ field: Field) -> UInt64 { Self.read(field, data) }
        let kind: TraceEvent.Kind
        switch d.kind {
        case .userspaceExit:
            kind = .userspaceExit(reason: ExitReason(rawValue: UInt32(truncatingIfNeeded: u(f.0))), errno: Int32(truncatingIfNeeded: u(f.1)))
        case .mmio:
            kind = .mmio(TraceEvent.MMIOType(UInt32(truncatingIfNeeded: u(f.0))), length: UInt32(truncatingIfNeeded: u(f.1)), gpa: u(f.2), value: u(f.3))
        case .hypercall:
            kind = .hypercall(Hypercall(nr: u(f.0), a0: u(f.1), a1: u(f.2), a2: u(f.3), a3: u(f.4)))
        case .pageFault:
            kind = .pageFault(vcpu: UInt32(truncatingIfNeeded: u(f.0)), rip: u(f.1), address: u(f.2), errorCode: PageFaultErrorCode(rawValue: u(f.3)))
        case .exit:
            kind = .exit(vcpu: UInt32(truncatingIfNeeded: u(f.0)), isa: UInt32(truncatingIfNeeded: u(f.1)),
                         reason: UInt32(truncatingIfNeeded: u(f.2)), rip: u(f.3), info1: u(f.4), info2: u(f.5))
        case .setMemoryAttributes:
            kind = .setMemoryAttributes(startGFN: u(f.0), endGFN: u(f.1), attributes: u(f.2))
        case .ioctlEnter:
            kind = .ioctlEnter(fd: u(f.0), cmd: u(f.1))
        case .kernelPairedFault:
            kind = .kernelPairedFault(vcpu: UInt32(truncatingIfNeeded: u(f.0)), gpa: u(f.1), errorCode: PageFaultErrorCode(rawValue: u(f.2)),
                                      errno: Int32(truncatingIfNeeded: u(f.3)), sinceFaultNs: u(f.4))
        case .ioctlExit:
            // `long ret`: the field's size says how wide the sign is.
            let raw = u(f.0), size = f.0.size, bits = (size == 0 ? 8 : size) * 8
            kind = .ioctlExit(ret: bits >= 64 ? Int64(bitPattern: raw) : Int64(bitPattern: raw << UInt64(64 - bits)) >> Int64(64 - bits))
        case .other:
            kind = .other(id: id)
        }
        return TraceEvent(tid: tid, cpu: cpu, timeNs: timeNs, kind: kind)
    }
}

/// The event as one JSON object (`vmscope trace --json`): name, thread, time, and every field decoded beside its raw
/// value (`forEachMember`).
extension TraceEvent: JSONObjectRecord {
    /// The tracepoint's name (`kvm_mmio`, ...).
    public var name: String {
        switch kind {
        case .userspaceExit: "kvm_userspace_exit"
        case .mmio: "kvm_mmio"
        case .hypercall: "kvm_hypercall"
        case .pageFault: "kvm_page_fault"
        case .exit: "kvm_exit"
        case .setMemoryAttributes: "kvm_vm_set_mem_attributes"
        case .ioctlEnter: "sys_enter_ioctl"
        case .ioctlExit: "sys_exit_ioctl"
        case .kernelPairedFault: EventLayouts.kernelPairedFault
        case .other(let id): "event \(id)"
        }
    }

    /// The members that hold addresses (shown in hex in text).
    public static let addressMembers: Set<String> = ["gpa", "address", "rip", "a0", "map-gpa", "info1", "info2", "cmd", "start-gpa", "end-gpa"]

    /// The events of `batch` whose names `shownOnly` holds (every one when nil), a JSON object a line: `vmscope trace
    /// --json`'s output. The loop is here, in a module built optimised in every build: in the command's own module a
    /// debug build (the README's `swift run`, the lab's tests) walked the batch through unspecialised generic code,
    /// some 400 instructions an event (callgrind).
    public static func writeJSONLines(_ batch: [TraceEvent], shownOnly: Set<String>?, to out: JSONOutput) {
        for e in batch where shownOnly?.contains(e.name) ?? true {
            e.writeJSON(to: out)
            out.append(0x0A)
        }
    }

    /// Each member in order, to `m`: name, thread, time, and every field decoded beside its raw value.
    public func forEachMember(_ m: (JSONName, JSON) -> Void) {
        m("event", .string(name)); m("tid", .int(Int64(tid))); m("cpu", .int(Int64(cpu))); m(FaultRecord.Member.timeNs.jsonName, .u(timeNs))
        switch kind {
        case .userspaceExit(let reason, let errno):
            if reason == .memoryFault {
                // A MEMORY_FAULT exit is KVM_RUN returning -EFAULT by design: the reason, and the errno it came with.
                m("reason", .u(UInt64(reason.rawValue)))
                m("reason-name", .string(reason.name))
                m("errno", .int(Int64(errno)))
            } else if errno < 0 {
                m("errno", .int(Int64(errno)))
                m("error", .string(errno == -EINTR ? "EINTR (restart)" : "KVM_RUN failed"))
            } else {
                m("reason", .u(UInt64(reason.rawValue)))
                m("reason-name", .string(reason.name))
            }
        case .mmio(let type, let len, let gpa, let value):
            m("type", .string(type.description))
            m("len", .u(UInt64(len)))
            m("gpa", .u(gpa))
            m("val", .u(value))
        case .hypercall(let h):
            m("nr", .u(h.nr))
            m("name", .string(h.name))
            m("a0", .u(h.a0))
            m("a1", .u(h.a1))
            m("a2", .u(h.a2))
            m("a3", .u(h.a3))
            if let g = h.mapGPARange {
                m("map-gpa", .u(g.gpa))
                m("map-pages", .u(g.pages))
                m("map-page-size", g.pageSize.map { .u($0) } ?? .null)
                m("map-to", g.toPrivate.map { .string($0 ? "private" : "shared") } ?? .null)
                m("map-unknown-bits", .u(g.unknownBits))
            }
        case .pageFault(let vcpu, let rip, let address, let ec):
            m("vcpu", .u(UInt64(vcpu)))
            m("rip", .u(rip))
            m("address", .u(address))
            m("error-code", .u(ec.rawValue))
            m("error-bits", .array(ec.names.map(JSON.string)))
            m("access", .string(ec.access))
        case .exit(let vcpu, let isa, let reason, let rip, let info1, let info2):
            m("vcpu", .u(UInt64(vcpu)))
            m("isa", .string(isa == 1 ? "vmx" : isa == 2 ? "svm" : "isa-\(isa)"))
            m("reason", .u(UInt64(reason)))
            m("reason-name", HardwareExitNames.name(isa: isa, reason: reason).map(JSON.string) ?? .null)
            m("rip", .u(rip))
            m("info1", .u(info1))
            m("info2", .u(info2))
        case .setMemoryAttributes(let start, let end, let attributes):
            m("start-gfn", .u(start))
            m("end-gfn", .u(end))
            m("start-gpa", .u(start.multipliedReportingOverflow(by: 4096).overflow ? .max : start &* 4096))
            m("end-gpa", .u(end.multipliedReportingOverflow(by: 4096).overflow ? .max : end * 4096))
            m("attributes", .u(attributes))
            m("to", .string(attributes & MemoryAttributes.private.rawValue != 0 ? "private" : "shared"))
        case .ioctlEnter(let fd, let cmd):
            m("fd", .u(fd))
            m("cmd", .u(cmd))
            m("cmd-name", .string([KVMIoctl.setMemoryAttributes, KVMIoctl.run].first { UInt64($0.value) == cmd }?.name ?? "ioctl"))
        case .ioctlExit(let ret):
            m("ret", .int(ret))
            if ret < 0, ret >= -4095 { m("errno", .string(KVMError.name(of: Int32(-ret)))) }
        case .kernelPairedFault(let vcpu, let gpa, let ec, let errno, let since):
            m("vcpu", .u(UInt64(vcpu)))
            m("gpa", .u(gpa))
            m("error-code", .u(ec.rawValue))
            m("error-bits", .array(ec.names.map(JSON.string)))
            m("access", .string(ec.access))
            m("errno", .int(Int64(errno)))
            m("since-page-fault-ns", .u(since))
            m("paired-from", TracedMemoryFault.pairedFrom)
        case .other:
            break
        }
    }
}
