import CKVM

/// The x86 state for a 32-bit flat protected-mode guest without paging: the mode that runs on every KVM flavour
/// this project meets. On the software one of its own machines (PVM) it runs, but not natively: kvm_emulate_insn
/// fires for each guest instruction, a few million instructions a second.
public enum FlatProtectedMode {
    /// Selector of the flat 32-bit code segment (GDT entry 1).
    public static let codeSelector: UInt16 = 0x08
    /// Selector of the flat 32-bit data segment (GDT entry 2).
    public static let dataSelector: UInt16 = 0x10
    /// CR0.PE | CR0.ET.
    public static let cr0: UInt64 = 0x11
    /// CR4.MCE: machine checks are delivered as #MC instead of shutting the vCPU down.
    public static let cr4MCE: UInt64 = 1 << 6

    /// The GDT the guest needs in its memory: null, flat code (0x08), flat data (0x10), little-endian bytes.
    public static let gdtBytes: [UInt8] = {
        let entries: [UInt64] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
        return entries.flatMap { e in (0..<8).map { UInt8(truncatingIfNeeded: e >> (8 * UInt64($0))) } }
    }()

    static func segment(selector: UInt16, type: UInt8) -> kvm_segment {
        var s = kvm_segment()
        s.base = 0
        s.limit = 0xFFFF_FFFF
        s.selector = selector
        s.type = type
        s.present = 1
        s.dpl = 0
        s.db = 1
        s.s = 1
        s.l = 0
        s.g = 1
        return s
    }

    /// Turns `sregs` (as read from a fresh vCPU) into flat protected mode with the GDT at `gdtBase` and an IDT
    /// of `idtLimit + 1` bytes at `idtBase`; `cr4` is OR-ed in (e.g. `cr4MCE`).
    public static func configure(_ sregs: inout kvm_sregs, gdtBase: UInt64, idtBase: UInt64 = 0,
                                 idtLimit: UInt16 = 0, cr4: UInt64 = 0) {
        sregs.cs = segment(selector: codeSelector, type: 0xB)
        let data = segment(selector: dataSelector, type: 0x3)
        sregs.ds = data
        sregs.es = data
        sregs.fs = data
        sregs.gs = data
        sregs.ss = data
        sregs.gdt.base = gdtBase
        sregs.gdt.limit = UInt16(gdtBytes.count - 1)
        sregs.idt.base = idtBase
        sregs.idt.limit = idtLimit
        sregs.cr0 = cr0
        sregs.cr4 = cr4
        sregs.efer = 0
    }

    /// General registers to start at `entry` with stack `stack` and interrupts off.
    public static func registers(entry: UInt64, stack: UInt64) -> kvm_regs {
        var regs = kvm_regs()
        regs.rip = entry
        regs.rsp = stack
        regs.rflags = 0x2
        return regs
    }
}
