/// A tiny assembler for 32-bit x86 in flat protected mode: the instructions the built-in guest needs, nothing more.
///
/// Memory operands are register-indirect (`[reg]`, `[reg + disp]`) only: the absolute-address `moffs` forms
/// misbehave under the software KVM on this project's machines (see `kvm-facts.md`). Labels are resolved
/// when `assemble()` is called; every jump and call is emitted with a 32-bit displacement, so code size
/// does not depend on label positions.
public struct X86Assembler {
    public enum Register: UInt8, Sendable, CaseIterable {
        case eax = 0, ecx, edx, ebx, esp, ebp, esi, edi
    }

    public enum Condition: UInt8, Sendable {
        case overflow = 0x0, below = 0x2, aboveOrEqual = 0x3, equal = 0x4, notEqual = 0x5, belowOrEqual = 0x6,
             above = 0x7, sign = 0x8, less = 0xC, greaterOrEqual = 0xD, lessOrEqual = 0xE, greater = 0xF
    }

    public enum AssemblyError: Error, Equatable, CustomStringConvertible {
        case undefinedLabel(String)
        case duplicateLabel(String)

        public var description: String {
            switch self {
            case .undefinedLabel(let l): "undefined label \(l)"
            case .duplicateLabel(let l): "label \(l) defined twice"
            }
        }
    }

    /// Address the first byte will be loaded at (labels resolve to absolute addresses).
    public let origin: UInt32
    public private(set) var bytes: [UInt8] = []
    private var labels: [String: UInt32] = [:]
    private var fixups: [(at: Int, label: String, relative: Bool)] = []
    private var duplicate: String?

    public init(origin: UInt32) { self.origin = origin }

    /// The current address.
    public var here: UInt32 { origin + UInt32(bytes.count) }

    public mutating func label(_ name: String) {
        if labels[name] != nil { duplicate = duplicate ?? name }
        labels[name] = here
    }

    /// The machine code with every label resolved.
    public func assemble() throws(AssemblyError) -> [UInt8] {
        if let duplicate { throw .duplicateLabel(duplicate) }
        var out = bytes
        for f in fixups {
            guard let target = labels[f.label] else { throw .undefinedLabel(f.label) }
            let value = f.relative ? target &- (origin &+ UInt32(f.at + 4)) : target
            for i in 0..<4 { out[f.at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i))) }
        }
        return out
    }

    /// The address of `name` once defined (for data the host must find, e.g. a mailbox).
    public func address(of name: String) -> UInt32? { labels[name] }

    // MARK: Encoding helpers

    private mutating func emit(_ b: UInt8...) { bytes.append(contentsOf: b) }
    private mutating func emit32(_ v: UInt32) {
        for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
    }
    private mutating func emitFixup(_ label: String, relative: Bool) {
        fixups.append((bytes.count, label, relative))
        emit32(0)
    }

    /// ModRM (+SIB, +displacement) for `[base + disp]` with `reg` in the reg field.
    private mutating func memoryOperand(reg: UInt8, base: Register, disp: Int32) {
        let needsDisp = disp != 0 || base == .ebp
        let small = disp >= -128 && disp <= 127
        let mod: UInt8 = !needsDisp ? 0 : (small ? 1 : 2)
        emit(mod << 6 | (reg & 7) << 3 | base.rawValue)
        if base == .esp { emit(0x24) }  // SIB: base esp, no index
        if mod == 1 { emit(UInt8(bitPattern: Int8(disp))) }
        if mod == 2 { emit32(UInt32(bitPattern: disp)) }
    }

    private mutating func registerOperand(reg: UInt8, rm: Register) {
        emit(0xC0 | (reg & 7) << 3 | rm.rawValue)
    }

    // MARK: Moves

    /// `mov dst, imm32`.
    public mutating func mov(_ dst: Register, _ imm: UInt32) { emit(0xB8 + dst.rawValue); emit32(imm) }
    /// `mov dst, label` (the label's absolute address).
    public mutating func mov(_ dst: Register, address label: String) { emit(0xB8 + dst.rawValue); emitFixup(label, relative: false) }
    /// `mov dst, src`.
    public mutating func mov(_ dst: Register, _ src: Register) { emit(0x89); registerOperand(reg: src.rawValue, rm: dst) }
    /// `mov dword [base + disp], src`.
    public mutating func store(_ src: Register, to base: Register, disp: Int32 = 0) {
        emit(0x89); memoryOperand(reg: src.rawValue, base: base, disp: disp)
    }
    /// `mov dword [base + disp], imm32`.
    public mutating func store(imm: UInt32, to base: Register, disp: Int32 = 0) {
        emit(0xC7); memoryOperand(reg: 0, base: base, disp: disp); emit32(imm)
    }
    /// `mov dst, dword [base + disp]`.
    public mutating func load(_ dst: Register, from base: Register, disp: Int32 = 0) {
        emit(0x8B); memoryOperand(reg: dst.rawValue, base: base, disp: disp)
    }

    // MARK: Arithmetic

    public mutating func add(_ dst: Register, _ imm: UInt32) { emit(0x81); registerOperand(reg: 0, rm: dst); emit32(imm) }
    public mutating func add(_ dst: Register, _ src: Register) { emit(0x01); registerOperand(reg: src.rawValue, rm: dst) }
    public mutating func sub(_ dst: Register, _ imm: UInt32) { emit(0x81); registerOperand(reg: 5, rm: dst); emit32(imm) }
    public mutating func sub(_ dst: Register, _ src: Register) { emit(0x29); registerOperand(reg: src.rawValue, rm: dst) }
    public mutating func and(_ dst: Register, _ imm: UInt32) { emit(0x81); registerOperand(reg: 4, rm: dst); emit32(imm) }
    public mutating func or(_ dst: Register, _ src: Register) { emit(0x09); registerOperand(reg: src.rawValue, rm: dst) }
    public mutating func xor(_ dst: Register, _ src: Register) { emit(0x31); registerOperand(reg: src.rawValue, rm: dst) }
    public mutating func xor(_ dst: Register, _ imm: UInt32) { emit(0x81); registerOperand(reg: 6, rm: dst); emit32(imm) }
    public mutating func cmp(_ a: Register, _ b: Register) { emit(0x39); registerOperand(reg: b.rawValue, rm: a) }
    public mutating func cmp(_ a: Register, _ imm: UInt32) { emit(0x81); registerOperand(reg: 7, rm: a); emit32(imm) }
    /// `add dword [base + disp], imm32`.
    public mutating func addMemory(_ imm: UInt32, at base: Register, disp: Int32 = 0) {
        emit(0x81); memoryOperand(reg: 0, base: base, disp: disp); emit32(imm)
    }
    /// `lea dst, [base + disp]` (leaves the flags alone, unlike `add`).
    public mutating func lea(_ dst: Register, _ base: Register, disp: Int32) {
        emit(0x8D); memoryOperand(reg: dst.rawValue, base: base, disp: disp)
    }
    public mutating func inc(_ r: Register) { emit(0x40 + r.rawValue) }
    public mutating func dec(_ r: Register) { emit(0x48 + r.rawValue) }
    public mutating func shl(_ r: Register, _ count: UInt8) { emit(0xC1); registerOperand(reg: 4, rm: r); emit(count) }
    public mutating func shr(_ r: Register, _ count: UInt8) { emit(0xC1); registerOperand(reg: 5, rm: r); emit(count) }

    // MARK: Control flow

    public mutating func jmp(_ label: String) { emit(0xE9); emitFixup(label, relative: true) }
    public mutating func j(_ condition: Condition, _ label: String) { emit(0x0F, 0x80 + condition.rawValue); emitFixup(label, relative: true) }
    public mutating func call(_ label: String) { emit(0xE8); emitFixup(label, relative: true) }
    public mutating func ret() { emit(0xC3) }
    public mutating func iret() { emit(0xCF) }
    public mutating func hlt() { emit(0xF4) }
    public mutating func cli() { emit(0xFA) }
    public mutating func sti() { emit(0xFB) }
    public mutating func pause() { emit(0xF3, 0x90) }
    public mutating func push(_ r: Register) { emit(0x50 + r.rawValue) }
    public mutating func pop(_ r: Register) { emit(0x58 + r.rawValue) }
    public mutating func pushad() { emit(0x60) }
    public mutating func popad() { emit(0x61) }
    /// `wrmsr`: MSR `ecx` = `edx:eax`.
    public mutating func wrmsr() { emit(0x0F, 0x30) }
    /// `vmcall` (Intel) — hangs under the software KVM here; only for hosts where hypercalls work.
    public mutating func vmcall() { emit(0x0F, 0x01, 0xC1) }
    /// AMD's hypercall instruction.
    public mutating func vmmcall() { emit(0x0F, 0x01, 0xD9) }

    // MARK: Port I/O

    /// `out imm8, al`.
    public mutating func outAL(port: UInt8) { emit(0xE6, port) }
    /// `out dx, al`.
    public mutating func outDXAL() { emit(0xEE) }
    /// `out dx, eax`.
    public mutating func outDXEAX() { emit(0xEF) }
    /// `in eax, dx`.
    public mutating func inEAXDX() { emit(0xED) }

    // MARK: Data

    public mutating func data(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    public mutating func data32(_ v: UInt32) { emit32(v) }
    /// A 32-bit word holding `label`'s address.
    public mutating func data32(address label: String) { emitFixup(label, relative: false) }
    /// Pads with `int3` to a multiple of `alignment`.
    public mutating func align(_ alignment: Int) {
        while bytes.count % alignment != 0 { emit(0xCC) }
    }
}
