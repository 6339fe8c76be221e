/// `kvm_run.exit_reason`, with the names KVM's headers use (without the `KVM_EXIT_` prefix).
public struct ExitReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let unknown = ExitReason(rawValue: 0)
    public static let io = ExitReason(rawValue: 2)
    public static let hypercall = ExitReason(rawValue: 3)
    public static let debug = ExitReason(rawValue: 4)
    public static let hlt = ExitReason(rawValue: 5)
    public static let mmio = ExitReason(rawValue: 6)
    public static let shutdown = ExitReason(rawValue: 8)
    public static let failEntry = ExitReason(rawValue: 9)
    public static let intr = ExitReason(rawValue: 10)
    public static let internalError = ExitReason(rawValue: 17)
    public static let systemEvent = ExitReason(rawValue: 24)
    public static let memoryFault = ExitReason(rawValue: 39)

    static let names: [String] = [
        "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN", "SHUTDOWN",
        "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET", "DCR", "NMI", "INTERNAL_ERROR",
        "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG", "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI",
        "IOAPIC_EOI", "HYPERV", "ARM_NISV", "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD",
        "X86_BUS_LOCK", "XEN", "RISCV_SBI", "RISCV_CSR", "NOTIFY", "LOONGARCH_IOCSR", "MEMORY_FAULT", "TDX", "ARM_SEA",
    ]

    /// `IO`, `MMIO`, `MEMORY_FAULT`, ...; an unnamed number as `EXIT_N`.
    public var name: String {
        Int(rawValue) < Self.names.count ? Self.names[Int(rawValue)] : "EXIT_\(rawValue)"
    }

    public var description: String { name }

    /// Whether `name` is one KVM defines (`IO`, `MEMORY_FAULT`, ...), or a reason by number below 256 (`EXIT_41`):
    /// what a peer's exit counts may be labelled with (a peer that invents names gets no series for them).
    public static func isKVMName(_ name: String) -> Bool {
        if names.contains(name) { return true }
        guard name.hasPrefix("EXIT_"), let n = UInt32(name.dropFirst(5)) else { return false }
        return n < 256
    }
}
