import KVM

/// One KVM tracepoint event as vmscope decodes it (the `kvm` and `kvmmmu` groups, include/trace/events/kvm.h and
/// arch/x86/kvm/trace.h): what the kernel said, each field with its meaning, nothing inferred.
public struct TraceEvent: Sendable, Equatable {
    /// The thread the event came from (a vCPU thread of some VMM).
    public var tid: Int32
    /// CPU the event was recorded on, and its time (the trace clock, ns).
    public var cpu: Int32
    public var timeNs: UInt64
    public var kind: Kind

    public init(tid: Int32, cpu: Int32, timeNs: UInt64, kind: Kind) {
        self.tid = tid; self.cpu = cpu; self.timeNs = timeNs; self.kind = kind
    }

    public enum Kind: Sendable, Equatable {
        /// `kvm_userspace_exit`: KVM_RUN returned to the VMM with `reason`, or failed with `-errno`.
        case userspaceExit(reason: ExitReason, errno: Int32)
        /// `kvm_mmio`: an access KVM could not satisfy in the kernel (type 0 unsatisfied read, 1 read, 2 write).
        case mmio(MMIOType, length: UInt32, gpa: UInt64, value: UInt64)
        /// `kvm_hypercall`: a KVM hypercall, number and first four arguments.
        case hypercall(Hypercall)
        /// `kvm_page_fault`: a guest page fault KVM handled (GPA with TDP; a guest-virtual address with shadow paging).
        case pageFault(vcpu: UInt32, rip: UInt64, address: UInt64, errorCode: PageFaultErrorCode)
        /// `kvm_exit`: a hardware exit (VMX or SVM reason, by number; `HardwareExitNames` names it) with the exit's
        /// two information words (SVM: EXITINFO1/2, e.g. a nested page fault's error code and GPA; VMX: the exit
        /// qualification and, for EPT violations, the GPA).
        case exit(vcpu: UInt32, isa: UInt32, reason: UInt32, rip: UInt64, info1: UInt64, info2: UInt64)
        /// `kvm_vm_set_mem_attributes` (Linux 6.17 and later, where KVM has generic memory attributes; checked on
        /// 7.3): a `KVM_SET_MEMORY_ATTRIBUTES` for the GFNs [start, end) that passed the ioctl's argument checks
        /// (flags, attribute bits, size, alignment: requests refused there are not traced), before KVM takes the
        /// VM's slots lock. It may still be a no-op or fail (ENOMEM): the same thread's ioctl return says.
        case setMemoryAttributes(startGFN: UInt64, endGFN: UInt64, attributes: UInt64)
        /// `syscalls:sys_enter_ioctl`, kept by the kernel's filter only for `KVM_SET_MEMORY_ATTRIBUTES` (the thread
        /// asked for a conversion; its contents are in user memory, which a tracepoint cannot read) and `KVM_RUN` (a
        /// vCPU thread going back into the guest).
        case ioctlEnter(fd: UInt64, cmd: UInt64)
        /// `syscalls:sys_exit_ioctl`: the thread's ioctl returned `ret` (negative: -errno).
        case ioctlExit(ret: Int64)
        /// A MEMORY_FAULT exit's `kvm_page_fault`, paired by the kernel (`KernelPairing`: the thread's newest page
        /// fault, written by a hist trigger on that exit, on its thread, with the exit's errno): vCPU, GPA and error
        /// code, and the time from the page fault to the exit.
        case kernelPairedFault(vcpu: UInt32, gpa: UInt64, errorCode: PageFaultErrorCode, errno: Int32, sinceFaultNs: UInt64)
        /// Any other event, by its id (the common header's type): named "event ID". An id, not a name, keeps a
        /// `TraceEvent` a plain value, copied as bytes (a tracer copies each event several times on its way out).
        case other(id: Int)
    }

    /// A `kvm_userspace_exit` with reason MEMORY_FAULT.
    public var isMemoryFaultExit: Bool {
        if case .userspaceExit(let reason, _) = kind { return reason == .memoryFault }
        return false
    }

    /// `kvm_mmio`'s type.
    public enum MMIOType: Sendable, Equatable, CustomStringConvertible {
        case unsatisfiedRead, read, write, unknown(UInt32)
        public init(_ raw: UInt32) {
            self = switch raw { case 0: .unsatisfiedRead; case 1: .read; case 2: .write; default: .unknown(raw) }
        }
        public var description: String {
            switch self {
            case .unsatisfiedRead: "unsatisfied-read"
            case .read: "read"
            case .write: "write"
            case .unknown(let r): "type-\(r)"
            }
        }
    }
}

/// A KVM hypercall (`kvm_hypercall`): number and arguments, with `KVM_HC_MAP_GPA_RANGE` decoded as the explicit
/// conversion request it is (Documentation/virt/kvm/x86/hypercalls.rst).
public struct Hypercall: Sendable, Equatable, CustomStringConvertible {
    public var nr: UInt64
    public var a0: UInt64, a1: UInt64, a2: UInt64, a3: UInt64
    public init(nr: UInt64, a0: UInt64, a1: UInt64, a2: UInt64, a3: UInt64) {
        self.nr = nr; self.a0 = a0; self.a1 = a1; self.a2 = a2; self.a3 = a3
    }

    static let names: [UInt64: String] = [
        1: "KVM_HC_VAPIC_POLL_IRQ", 5: "KVM_HC_KICK_CPU", 9: "KVM_HC_CLOCK_PAIRING", 10: "KVM_HC_SEND_IPI",
        11: "KVM_HC_SCHED_YIELD", 12: "KVM_HC_MAP_GPA_RANGE",
    ]
    public static let mapGPARange: UInt64 = 12

    public var name: String { Self.names[nr] ?? "hypercall \(nr)" }

    /// `KVM_HC_MAP_GPA_RANGE`: a0 = GPA, a1 = pages, a2 = attributes (bits 0-3 page size: 0 4K, 1 2M, 2 1G;
    /// bit 4 encrypted, i.e. to private; bit 5 decrypted, i.e. to shared; others reserved).
    public struct MapGPARange: Sendable, Equatable {
        public var gpa: UInt64
        public var pages: UInt64
        public var pageSize: UInt64?
        public var toPrivate: Bool?
        /// Attribute bits no version of the ABI defines, kept raw.
        public var unknownBits: UInt64
    }

    public var mapGPARange: MapGPARange? {
        guard nr == Self.mapGPARange else { return nil }
        let sizeField = a2 & 0xF
        let pageSize: UInt64? = switch sizeField { case 0: 4096; case 1: 2 << 20; case 2: 1 << 30; default: nil }
        let enc = a2 & 0x10 != 0, dec = a2 & 0x20 != 0
        let toPrivate: Bool? = enc == dec ? nil : enc
        return MapGPARange(gpa: a0, pages: a1, pageSize: pageSize, toPrivate: toPrivate,
                           unknownBits: a2 & ~UInt64(0x3F) | (pageSize == nil ? sizeField : 0))
    }

    public var description: String {
        guard let m = mapGPARange else {
            return "\(name) a0 0x\(String(a0, radix: 16)) a1 0x\(String(a1, radix: 16)) a2 0x\(String(a2, radix: 16)) a3 0x\(String(a3, radix: 16))"
        }
        let to = m.toPrivate.map { $0 ? "to private (encrypted)" : "to shared (decrypted)" } ?? "direction unclear (attrs 0x\(String(a2, radix: 16)))"
        let size = m.pageSize.map { "\($0 >> 10)K pages" } ?? "page size field \(a2 & 0xF)"
        return "KVM_HC_MAP_GPA_RANGE gpa 0x\(String(m.gpa, radix: 16)) \(m.pages) × \(size) \(to)"
            + (m.unknownBits != 0 ? " unknown attr bits 0x\(String(m.unknownBits, radix: 16))" : "")
    }
}

/// The x86 page-fault error code as KVM passes it (`PFERR_*`, arch/x86/include/asm/kvm_host.h): the hardware's
/// bits 0-15, AMD's RMP bit 31, and KVM's synthetic bits 32 and up. Unknown bits are kept and shown by number.
public struct PageFaultErrorCode: RawRepresentable, Sendable, Equatable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Each known bit: its position and name.
    public static let bits: [(bit: Int, name: String)] = [
        (0, "present"), (1, "write"), (2, "user"), (3, "rsvd"), (4, "fetch"), (5, "pk"), (6, "ss"), (15, "sgx"),
        (31, "guest_rmp"), (32, "guest_final"), (33, "guest_page"), (34, "guest_enc"), (48, "implicit_access"),
        (49, "private_access"),
    ]

    public func has(_ name: String) -> Bool {
        Self.bits.first { $0.name == name }.map { rawValue & (1 << UInt64($0.bit)) != 0 } ?? false
    }

    /// What the access was: `fetch` → exec, `write` → write, else read (the hardware's own answer).
    public var access: String { has("fetch") ? "exec" : has("write") ? "write" : "read" }

    public var names: [String] {
        var out: [String] = []
        var rest = rawValue
        for (bit, name) in Self.bits where rawValue & (1 << UInt64(bit)) != 0 {
            out.append(name)
            rest &= ~(1 << UInt64(bit))
        }
        var b = 0
        while rest != 0 {
            if rest & 1 != 0 { out.append("bit\(b)") }
            rest >>= 1
            b += 1
        }
        return out
    }

    public var description: String {
        "0x\(String(rawValue, radix: 16))" + (rawValue == 0 ? " (not-present read, kernel)" : " (" + names.joined(separator: "|") + ")")
    }
}
