import Foundation
import ControlProtocol
import ProcessSupport

/// A 64 KiB firmware image for QEMU's `-bios` that, from the reset vector, goes to 32-bit flat protected mode and
/// reads the local APIC's version register (0xfee00030) every few thousand instructions, for ever: each read is a
/// kvm_mmio event on QEMU's vCPU thread, so a test of the trace source sees rows at once and for as long as it
/// likes. After each read it writes port 0x80 (POST codes: QEMU's, in userspace), an exit to QEMU that
/// kvm_userspace_exit counts, where the APIC read is KVM's own. SeaBIOS touched the APIC only during POST, which PVM emulates instruction by instruction (tens of millions
/// of them): under load a reset took longer than the test's wait to get there, and between resets nothing was traced.
///
/// PVM emulates every instruction of such a guest (kvm_emulate_insn fires for each; the VMM's built-in guest's too), a
/// few million a second. The bytes follow ../shared/spec/kvm-facts.md: the GDT in RAM (written from real mode), the
/// loop copied to RAM, register-indirect loads. The descriptors are already marked accessed: otherwise the far jump
/// into protected mode wants to write the bit into the ROM, and the emulator ran that jump again for ever (seen).
enum APICPollingFirmware {
    /// Iterations of the delay loop between two APIC reads: about 40 ms at the emulator's pace here (0x1000 gave a read
    /// every 2.4 ms).
    static let delayIterations: UInt32 = 0x1_0000

    static var image: [UInt8] {
        var rom = [UInt8](repeating: 0xFF, count: 0x1_0000)
        func put(_ offset: Int, _ bytes: [UInt8]) { rom.replaceSubrange(offset..<offset + bytes.count, with: bytes) }
        func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        // Real mode, CS base 0xffff0000, DS base 0: the offsets below are both ROM offsets and IPs.
        let gdt: UInt16 = 0x500, descriptor: UInt16 = 0x518
        let protectedEntry = 0xFF70, loopSource = 0xFFC0, loopTarget: UInt32 = 0x1000
        var real: [UInt8] = [0xFA]                                                         // cli
        for (i, word) in [0, 0, 0x0000_FFFF, 0x00CF_9B00, 0x0000_FFFF, 0x00CF_9300].enumerated() as EnumeratedSequence<[UInt32]> {
            real += [0x66, 0xC7, 0x06] + le16(gdt + UInt16(4 * i)) + le32(word)          // mov dword [gdt+4i], word
        }
        real += [0xC7, 0x06] + le16(descriptor) + le16(23)                                  // mov word [desc], limit
        real += [0x66, 0xC7, 0x06] + le16(descriptor + 2) + le32(UInt32(gdt))              // mov dword [desc+2], base
        real += [0x66, 0x0F, 0x01, 0x16] + le16(descriptor)                                 // o32 lgdt [desc]
        real += [0x0F, 0x20, 0xC0]                                                          // mov eax, cr0
        real += [0x66, 0x25] + le32(0x9FFF_FFFF)                                            // and eax, ~(CD|NW)
        real += [0x66, 0x83, 0xC8, 0x01]                                                    // or eax, PE
        real += [0x0F, 0x22, 0xC0]                                                          // mov cr0, eax
        real += [0x66, 0xEA] + le32(0xFFFF_0000 + UInt32(protectedEntry)) + le16(0x08)     // jmp dword 0x08:entry
        precondition(0xFF00 + real.count <= protectedEntry)
        put(0xFF00, real)
        let protected: [UInt8] = [0xB8] + le32(0x10) + [0x8E, 0xD8, 0x8E, 0xC0, 0x8E, 0xD0, 0x8E, 0xE0, 0x8E, 0xE8] // data segments
            + [0xBE] + le32(0xFFFF_0000 + UInt32(loopSource))                               // mov esi, loop in ROM
            + [0xBF] + le32(loopTarget)                                                     // mov edi, loop in RAM
            + [0xB9] + le32(32) + [0xF3, 0xA4]                                              // rep movsb (32 bytes)
            + [0xB8] + le32(loopTarget) + [0xFF, 0xE0]                                      // jmp eax
        precondition(protectedEntry + protected.count <= loopSource)
        put(protectedEntry, protected)
        let loop: [UInt8] = [0xBB] + le32(0xFEE0_0030)                                      // 0: mov ebx, APIC version
            + [0x8B, 0x03]                                                                  // 5: mov eax, [ebx]
            + [0xE6, 0x80]                                                                  // 7: out 0x80, al
            + [0xB9] + le32(delayIterations)                                                // 9: mov ecx, n
            + [0x49, 0x75, 0xFD]                                                            // 14: dec ecx; jnz 14
            + [0xEB, 0xF2]                                                                  // 17: jmp 5
        precondition(loop.count <= 32)
        put(loopSource, loop)
        put(0xFFF0, [0xE9] + le16(UInt16(truncatingIfNeeded: 0xFF00 - 0xFFF3)))            // reset vector: jmp 0xff00
        return rom
    }

    /// Starts QEMU with `arguments` on the image instead of SeaBIOS. QEMU listens on its monitors before it loads the
    /// image, but greets a client only afterwards: once a monitor has greeted, the file goes.
    static func startQEMU(_ arguments: [String], monitors: Int) throws -> QEMUInstance {
        let path = NSTemporaryDirectory() + "vmscope-apic-polling-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).rom"
        try Data(image).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let qemu = try vmscopeTests.startQEMU(arguments + ["-bios", path], monitors: monitors)
        try ControlClient(path: qemu.qmpSockets[0]).close()
        return qemu
    }
}
