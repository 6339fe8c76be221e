/// Names of hardware exit reasons as `kvm_exit` reports them: AMD SVM exit codes (arch/x86/include/uapi/asm/svm.h)
/// and Intel VMX basic exit reasons (arch/x86/include/uapi/asm/vmx.h), as of Linux 6.12. A code not listed is shown
/// by number; nothing is guessed.
public enum HardwareExitNames {
    /// `isa` as `kvm_exit` gives it: 1 VMX, 2 SVM.
    public static func name(isa: UInt32, reason: UInt32) -> String? {
        switch isa {
        case 1: return vmx[reason & 0xFFFF].map { reason & 0x8000_0000 != 0 ? "FAILED_ENTRY_" + $0 : $0 }
        case 2:
            if (0x40...0x5F).contains(reason) { return "EXCP_\(reason - 0x40)" }
            return svm[reason]
        default: return nil
        }
    }

    static let svm: [UInt32: String] = [
        0x000: "READ_CR0", 0x002: "READ_CR2", 0x003: "READ_CR3", 0x004: "READ_CR4", 0x008: "READ_CR8",
        0x010: "WRITE_CR0", 0x012: "WRITE_CR2", 0x013: "WRITE_CR3", 0x014: "WRITE_CR4", 0x018: "WRITE_CR8",
        0x020: "READ_DR0", 0x021: "READ_DR1", 0x022: "READ_DR2", 0x023: "READ_DR3", 0x024: "READ_DR4",
        0x025: "READ_DR5", 0x026: "READ_DR6", 0x027: "READ_DR7", 0x030: "WRITE_DR0", 0x031: "WRITE_DR1",
        0x032: "WRITE_DR2", 0x033: "WRITE_DR3", 0x034: "WRITE_DR4", 0x035: "WRITE_DR5", 0x036: "WRITE_DR6",
        0x037: "WRITE_DR7", 0x060: "INTR", 0x061: "NMI", 0x062: "SMI", 0x063: "INIT", 0x064: "VINTR",
        0x065: "CR0_SEL_WRITE", 0x066: "IDTR_READ", 0x067: "GDTR_READ", 0x068: "LDTR_READ", 0x069: "TR_READ",
        0x06a: "IDTR_WRITE", 0x06b: "GDTR_WRITE", 0x06c: "LDTR_WRITE", 0x06d: "TR_WRITE", 0x06e: "RDTSC",
        0x06f: "RDPMC", 0x070: "PUSHF", 0x071: "POPF", 0x072: "CPUID", 0x073: "RSM", 0x074: "IRET", 0x075: "SWINT",
        0x076: "INVD", 0x077: "PAUSE", 0x078: "HLT", 0x079: "INVLPG", 0x07a: "INVLPGA", 0x07b: "IOIO", 0x07c: "MSR",
        0x07d: "TASK_SWITCH", 0x07e: "FERR_FREEZE", 0x07f: "SHUTDOWN", 0x080: "VMRUN", 0x081: "VMMCALL",
        0x082: "VMLOAD", 0x083: "VMSAVE", 0x084: "STGI", 0x085: "CLGI", 0x086: "SKINIT", 0x087: "RDTSCP",
        0x088: "ICEBP", 0x089: "WBINVD", 0x08a: "MONITOR", 0x08b: "MWAIT", 0x08c: "MWAIT_COND", 0x08d: "XSETBV",
        0x08e: "RDPRU", 0x08f: "EFER_WRITE_TRAP", 0x090: "CR0_WRITE_TRAP", 0x091: "CR1_WRITE_TRAP",
        0x092: "CR2_WRITE_TRAP", 0x093: "CR3_WRITE_TRAP", 0x094: "CR4_WRITE_TRAP", 0x095: "CR5_WRITE_TRAP",
        0x096: "CR6_WRITE_TRAP", 0x097: "CR7_WRITE_TRAP", 0x098: "CR8_WRITE_TRAP", 0x099: "CR9_WRITE_TRAP",
        0x09a: "CR10_WRITE_TRAP", 0x09b: "CR11_WRITE_TRAP", 0x09c: "CR12_WRITE_TRAP", 0x09d: "CR13_WRITE_TRAP",
        0x09e: "CR14_WRITE_TRAP", 0x09f: "CR15_WRITE_TRAP", 0x0a2: "INVPCID", 0x400: "NPF",
        0x401: "AVIC_INCOMPLETE_IPI", 0x402: "AVIC_UNACCELERATED_ACCESS", 0x403: "VMGEXIT",
    ]

    static let vmx: [UInt32: String] = [
        0: "EXCEPTION_NMI", 1: "EXTERNAL_INTERRUPT", 2: "TRIPLE_FAULT", 3: "INIT_SIGNAL", 4: "SIPI_SIGNAL",
        7: "INTERRUPT_WINDOW", 8: "NMI_WINDOW", 9: "TASK_SWITCH", 10: "CPUID", 12: "HLT", 13: "INVD", 14: "INVLPG",
        15: "RDPMC", 16: "RDTSC", 18: "VMCALL", 19: "VMCLEAR", 20: "VMLAUNCH", 21: "VMPTRLD", 22: "VMPTRST",
        23: "VMREAD", 24: "VMRESUME", 25: "VMWRITE", 26: "VMOFF", 27: "VMON", 28: "CR_ACCESS", 29: "DR_ACCESS",
        30: "IO_INSTRUCTION", 31: "MSR_READ", 32: "MSR_WRITE", 33: "INVALID_STATE", 34: "MSR_LOAD_FAIL",
        36: "MWAIT_INSTRUCTION", 37: "MONITOR_TRAP_FLAG", 39: "MONITOR_INSTRUCTION", 40: "PAUSE_INSTRUCTION",
        41: "MCE_DURING_VMENTRY", 43: "TPR_BELOW_THRESHOLD", 44: "APIC_ACCESS", 45: "EOI_INDUCED", 46: "GDTR_IDTR",
        47: "LDTR_TR", 48: "EPT_VIOLATION", 49: "EPT_MISCONFIG", 50: "INVEPT", 51: "RDTSCP", 52: "PREEMPTION_TIMER",
        53: "INVVPID", 54: "WBINVD", 55: "XSETBV", 56: "APIC_WRITE", 57: "RDRAND", 58: "INVPCID", 59: "VMFUNC",
        60: "ENCLS", 61: "RDSEED", 62: "PML_FULL", 63: "XSAVES", 64: "XRSTORS", 67: "UMWAIT", 68: "TPAUSE",
        74: "BUS_LOCK", 75: "NOTIFY",
    ]
}
