@testable import Schema
import ControlProtocol
import Foundation
import Testing
@testable import Inspector

struct QEMUParserTests {
    @Test func flatViewKeepsTheMemoryAddressSpaceAndMarksKVMRanges() throws {
        let text = try qemuFixture("qemu72-q35-dimm-mtree.txt")
        #expect(text.contains("\r\n"), "the fixture keeps QEMU's CRLF line ends")
        let ranges = QEMUText.flatView(text)
        let kvm = ranges.filter(\.kvm)
        #expect(kvm.map(\.start) == [0, 0xc3000, 0xe8000, 0xf0000, 0x100000, 0xfffc0000, 0x1_0000_0000, 0x1_4000_0000])
        #expect(kvm.map(\.size) == [0xc3000, 0x25000, 0x8000, 0x10000, 0x7ff0_0000, 0x40000, 0x4000_0000, 0x1000_0000])
        #expect(kvm.map(\.name) == ["pc.ram", "pc.ram", "pc.ram", "pc.ram", "pc.ram", "pc.bios", "pc.ram", "m1"])
        #expect(kvm.map(\.offset) == [nil, 0xc3000, 0xe8000, 0xf0000, 0x100000, nil, 0x8000_0000, nil])
        #expect(kvm.map(\.type) == ["ram", "rom", "ram", "rom", "ram", "rom", "ram", "ram"])
        // Device MMIO in the same view is there, but not KVM-mapped; the I/O address space is not read at all.
        #expect(ranges.contains { $0.name == "kvm-ioapic" && !$0.kvm })
        #expect(!ranges.contains { $0.name == "kvm-pic" || $0.name == "dma-chan" })
    }

    @Test func flatViewSkipsWhatItCannotRead() {
        let text = "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  zzzz-0fff (prio 0, ram): x KVM\n  0000-0fff garbage\n  1000-0fff (prio 0, ram): backwards KVM\n  2000-2fff (prio 0, ram): ok KVM\n"
        #expect(QEMUText.flatView(text).map(\.name) == ["ok"])
        #expect(QEMUText.flatView(text, addressSpace: "I/O").isEmpty)
    }

    @Test func registersOf32BitCodeMapOntoTheRegisterModel() throws {
        let cpus = QEMUText.registers(try qemuFixture("qemu72-pc-registers.txt"))
        #expect(cpus.keys.sorted() == [0, 1])
        let c1 = try #require(cpus[1])
        // CPU#1 of that capture: EAX=000f49f6 … EIP=000fd09a EFL=00000002, CS =0008, CR0=00000011, HLT=1.
        #expect(c1.general["rax"] == 0xf49f6 && c1.general["rcx"] == 0x2ff && c1.general["rdx"] == 1)
        #expect(c1.general["rsp"] == 0x6c5c && c1.general["rip"] == 0xfd09a && c1.general["rflags"] == 2)
        #expect(c1.selectors == ["cs": 8, "ds": 0x10, "es": 0x10, "fs": 0x10, "gs": 0x10, "ss": 0x10])
        #expect(c1.control == ["cr0": 0x11, "cr2": 0, "cr3": 0, "cr4": 0, "efer": 0])
        #expect(c1.halted)
        #expect(c1.orderedGeneral.map(\.0) == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "rflags"])
        #expect(cpus[0]?.selectors["cs"] == 0xf000 && cpus[0]?.selectors["es"] == 0xd980)
    }

    @Test func registersOf64BitCodeIncludingPaddedNames() {
        // QEMU's long-mode layout (target/i386/cpu-dump.c): short names padded before '='.
        let text = """
            \r\nCPU#0\r\nRAX=ffffffff81000000 RBX=0000000000000001 RCX=0000000000000002 RDX=0000000000000003\r
            RSI=0000000000000004 RDI=0000000000000005 RBP=0000000000000006 RSP=ffffc90000003f00\r
            R8 =0000000000000008 R9 =0000000000000009 R10=000000000000000a R11=000000000000000b\r
            R12=000000000000000c R13=000000000000000d R14=000000000000000e R15=000000000000000f\r
            RIP=ffffffff81e0c2a4 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0\r
            CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\r
            CR0=80050033 CR2=00007f0000000000 CR3=000000000260a000 CR4=00350ef0\r
            EFER=0000000000000d01\r\n
            """
        let c = QEMUText.registers(text)[0]
        #expect(c?.general["rax"] == 0xffff_ffff_8100_0000 && c?.general["r8"] == 8 && c?.general["r9"] == 9 && c?.general["r15"] == 15)
        #expect(c?.general["rip"] == 0xffff_ffff_81e0_c2a4 && c?.general["rflags"] == 0x246)
        #expect(c?.selectors["cs"] == 0x10 && c?.control["cr2"] == 0x7f00_0000_0000 && c?.control["efer"] == 0xd01)
        #expect(c?.halted == false)
        #expect(c?.orderedGeneral.count == 18)
    }

    @Test func memoryDumpStopsAtQEMUsError() {
        let ok = QEMUText.memoryDump("\r\n00000000000f0000: 0x43 0x24 0x83\r\n00000000000f0003: 0xc4\r\n")
        #expect(ok.bytes == [0x43, 0x24, 0x83, 0xc4] && ok.error == nil)
        let bad = QEMUText.memoryDump("0000000000000000: 0x01 0x02\r\n0000007ffffffff0: Cannot access memory\r\n")
        #expect(bad.bytes == [1, 2] && bad.error == "Cannot access memory")
    }

    @Test func statsAreKeyedByQOMPathWithHistogramsLeftOut() throws {
        let reply = try JSON.parse(#"""
            [{"provider":"kvm","qom-path":"/machine/unattached/device[2]","stats":[{"name":"exits","value":20},{"name":"guest_mode","value":false},{"name":"halt_wait_hist","value":[1,2]}]},
             {"provider":"kvm","qom-path":"/machine/unattached/device[0]","stats":[{"name":"exits","value":8962},{"name":"blocking","value":true}]}]
            """#)
        let s = QEMUQMP.kvmStatsByPath(reply)
        #expect(s["/machine/unattached/device[2]"]?.map(\.0) == ["exits", "guest_mode"])
        #expect(s["/machine/unattached/device[0]"]?.map(\.1) == [8962, 1])
    }
}
