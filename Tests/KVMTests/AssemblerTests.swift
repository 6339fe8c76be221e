import Glibc
import CKVM
import GuestCode
import Testing
import TestSupport
@testable import KVM

@Suite struct AssemblerTests {
    /// Encodings checked against the Intel SDM (and `objdump -D -b binary -m i386`).
    @Test func encodesTheInstructionsTheGuestUses() throws {
        var a = X86Assembler(origin: 0x2000)
        a.mov(.ecx, 0x0010_0000)            // b9 00 00 10 00
        a.store(.eax, to: .ecx)              // 89 01
        a.store(.eax, to: .ebp)              // 89 45 00
        a.store(.eax, to: .esp, disp: 4)     // 89 44 24 04
        a.load(.edx, from: .ebx, disp: 0x200) // 8b 93 00 02 00 00
        a.outAL(port: 0x10)                  // e6 10
        a.hlt()                              // f4
        #expect(try a.assemble() == [0xB9, 0, 0, 0x10, 0, 0x89, 0x01, 0x89, 0x45, 0x00, 0x89, 0x44, 0x24, 0x04,
                                     0x8B, 0x93, 0x00, 0x02, 0x00, 0x00, 0xE6, 0x10, 0xF4])
    }

    @Test func resolvesLabelsBackwardAndForward() throws {
        var a = X86Assembler(origin: 0x1000)
        a.label("top")           // 0x1000
        a.jmp("end")             // e9 rel32: end(0x100C) - 0x1005 = 7
        a.j(.notEqual, "top")    // 0f 85 rel32: 0x1000 - 0x100B = -11
        a.hlt()
        a.label("end")
        a.mov(.eax, address: "top")
        #expect(try a.assemble() == [0xE9, 7, 0, 0, 0, 0x0F, 0x85, 0xF5, 0xFF, 0xFF, 0xFF, 0xF4, 0xB8, 0, 0x10, 0, 0])
    }

    @Test func undefinedLabelIsAnError() {
        var a = X86Assembler(origin: 0)
        a.jmp("nowhere")
        #expect(throws: X86Assembler.AssemblyError.undefinedLabel("nowhere")) { try a.assemble() }
    }
}
