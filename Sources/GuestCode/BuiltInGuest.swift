/// Where the built-in guest keeps things in guest-physical memory, and the ports it talks through.
///
/// Everything below 1 MiB is the guest's own bookkeeping (always private); working sets start at 1 MiB.
public enum GuestLayout {
    public static let gdt: UInt32 = 0x1000
    public static let idt: UInt32 = 0x2000
    public static let idtLimit: UInt16 = 256 * 8 - 1
    /// Per-vCPU parameter blocks (`ParameterBlock`), 128 bytes each.
    public static let parameterBlocks: UInt32 = 0x4000
    public static let parameterBlockSize: UInt32 = 0x80
    /// Stacks grow down from `stackTop(vcpu)`.
    public static let stacks: UInt32 = 0x10000
    public static let code: UInt32 = 0x60000
    /// Per-vCPU bounce buffers (one page each), converted shared and back by the guest's doorbell requests.
    public static let bounceBuffers: UInt32 = 0x80000
    public static let workingSets: UInt32 = 0x10_0000
    public static let maxVCPUs = 64

    public static func parameterBlock(_ vcpu: Int) -> UInt32 { parameterBlocks + UInt32(vcpu) * parameterBlockSize }
    public static func stackTop(_ vcpu: Int) -> UInt32 { stacks + UInt32(vcpu + 1) * 0x1000 }
    public static func bounceBuffer(_ vcpu: Int) -> UInt32 { bounceBuffers + UInt32(vcpu) * 0x1000 }
    public static func workingSet(_ vcpu: Int, pages: Int) -> UInt32 { workingSets + UInt32(vcpu * pages) * 0x1000 }
    /// The RAM the guest needs for `vcpus` working sets of `pages` pages.
    public static func ramNeeded(vcpus: Int, pages: Int) -> UInt64 { UInt64(workingSet(vcpus, pages: pages)) }
}

/// I/O ports of the built-in guest (`out dx, eax`; the value is in EAX).
public enum GuestPort {
    /// EAX = GPA of the doorbell descriptor in the parameter block: a conversion request.
    public static let doorbell: UInt16 = 0x500
    /// EAX = pass counter, once per pass.
    public static let heartbeat: UInt16 = 0x510
    /// EAX = GPA of the first word of a page that read back wrong.
    public static let integrityError: UInt16 = 0x511
    /// EAX = 18: the #MC handler ran.
    public static let mceSeen: UInt16 = 0x512
    /// EAX = 2: the NMI handler ran.
    public static let nmiSeen: UInt16 = 0x513
    /// EAX = GPA of a bounce-buffer word that read back wrong through the shared alias.
    public static let bounceError: UInt16 = 0x514
    /// EAX = vector of an unexpected exception; the guest then halts for good.
    public static let exception: UInt16 = 0x515
    /// EAX = the status the VMM wrote for a failed doorbell request.
    public static let doorbellFailed: UInt16 = 0x516
    /// Conversion selftest: EAX = phase (`SelftestPhase`); the range is in the parameter block
    /// (`selftestGPA`, `selftestSize`). The vCPU waits while the host checks and writes the backings.
    public static let selftestSync: UInt16 = 0x517
}

/// The points at which the conversion selftest stops for the host (`GuestPort.selftestSync`).
public enum SelftestPhase: UInt32, Sendable {
    /// The range is shared; the guest wrote `gpa ^ sharedKey` through the alias. The host checks the shared
    /// backing holds that, the private backing was discarded (zeros), then writes `gpa ^ hostKey` to the shared
    /// backing, which the guest checks next.
    case sharedWritten = 1
    /// The range is private again; the guest wrote `gpa ^ privateKey` through the private view. The host
    /// checks the private backing holds that and the shared backing was discarded (zeros: nothing leaked).
    case privateWritten = 2

    /// Keys XORed with each word's GPA (the address without the alias bit).
    public static let initialKey: UInt32 = 0x1111_1111
    public static let sharedKey: UInt32 = 0x2222_2222
    public static let hostKey: UInt32 = 0x3333_3333
    public static let privateKey: UInt32 = 0x4444_4444
    /// (offset, size) inside each vCPU's region, as in the kernel's private_mem_conversions_test.
    public static let ranges: [(offset: UInt32, size: UInt32)] = [
        (0, 0x1000), (0, 0x20_0000), (0x1000, 0x1000), (0x1000, 0x20_0000), (0x20_0000, 0x1000),
    ]
    /// The region each vCPU needs: the largest offset + size, rounded up to 4 MiB.
    public static let regionPages = 1024
}

/// Offsets inside a vCPU's parameter block. The VMM fills the configuration; the guest owns the rest.
public enum ParameterBlock {
    public static let vcpu: Int32 = 0
    public static let workingSetBase: Int32 = 4
    public static let workingSetPages: Int32 = 8
    public static let bounceBuffer: Int32 = 12
    /// The shared-alias bit as a mask (0: no alias the guest can reach; steps 2 and 4 are skipped).
    public static let sharedAlias: Int32 = 16
    /// Convert the bounce buffer every N passes (0: never).
    public static let convertEvery: Int32 = 20
    /// Touch a working-set page through the wrong view every M passes (0: never).
    public static let wrongViewEvery: Int32 = 24
    /// The guest's pass counter.
    public static let pass: Int32 = 28
    /// Doorbell descriptor: GPA, pages, to-private (1/0), status (written by the VMM: 0 = done).
    public static let doorbellGPA: Int32 = 32
    public static let doorbellPages: Int32 = 36
    public static let doorbellToPrivate: Int32 = 40
    public static let doorbellStatus: Int32 = 44
    /// Bytes between the words the guest writes and checks in each page (a divisor of 4096).
    public static let stride: Int32 = 48
    public static let convertCountdown: Int32 = 56
    public static let wrongViewCountdown: Int32 = 60
    /// Offset of the next page the wrong-view touch reads.
    public static let wrongViewOffset: Int32 = 64
    /// 0: the demo loop; 1: the conversion selftest (`SelftestPhase`) over the working set.
    public static let mode: Int32 = 68
    /// Selftest: the range under test, and the address of its entry in the range table.
    public static let selftestGPA: Int32 = 72
    public static let selftestSize: Int32 = 76
    public static let selftestEntry: Int32 = 80
    /// The working-set page (GPA) the last wrong-view touch converted away: the next pass does not expect its
    /// old contents (0xFFFFFFFF: none).
    public static let skipPage: Int32 = 84
    /// How conversion requests go out (`GuestRequestInstruction`): 0 the doorbell port, else the
    /// `KVM_HC_MAP_GPA_RANGE` hypercall by this instruction.
    public static let hypercall: Int32 = 88
    /// The working-set page (GPA) whose bad word this pass reported last (the guest's own: 0xFFFFFFFF at each pass).
    public static let reportedPage: Int32 = 92
}

/// How the built-in guest asks for conversions: the doorbell port (an I/O exit, which any KVM forwards), or
/// `KVM_HC_MAP_GPA_RANGE` (Documentation/virt/kvm/x86/hypercalls.rst: RBX gpa, RCX pages, RDX attributes), which
/// KVM forwards as `KVM_EXIT_HYPERCALL` once the VMM enabled `KVM_CAP_EXIT_HYPERCALL`, by the vendor's instruction.
public enum GuestRequestInstruction: UInt32, Sendable {
    case doorbell = 0
    /// Intel's `vmcall`.
    case vmcall = 1
    /// AMD's `vmmcall`.
    case vmmcall = 2
}

/// The built-in guest: 32-bit flat protected mode, no paging, one loop per vCPU over its own working set.
///
/// Each pass (ESI = parameter block, EBP = pass counter):
/// 1. for every `stride`-th word of its working set, through the private view: checks that it still holds what
///    the previous pass wrote (except the page its own wrong-view touch gave away), so a discard or a lossy
///    conversion is reported whenever it happened, then writes `gpa XOR pass`; then reads them all back. The
///    first bad word of each page is reported on `GuestPort.integrityError`, once for the check before the write
///    and once for the read-back;
/// 2. every `convertEvery` passes asks through the doorbell for its bounce buffer to become shared, copies
///    `bounceBytes` of its working set into it through the shared alias, checks the copy, and asks for it back private;
/// 3. every `wrongViewEvery` passes reads one working-set page through the shared alias without asking, as a
///    guest with a conversion bug would, so a demo's fault stream is never silent;
/// 4. reports its pass counter on `GuestPort.heartbeat`.
/// The #MC and NMI handlers report on their ports and return (without `iret`, see `returnFromInterrupt`); any other exception reports its vector and
/// halts. Memory operands are register-indirect only (see `kvm-facts.md`).
public struct BuiltInGuest: Sendable {
    /// Bytes copied through the bounce buffer each time.
    public static let bounceBytes: UInt32 = 256
    /// `KVM_HC_MAP_GPA_RANGE`'s number.
    public static let mapGPARange: UInt32 = 12
    public let code: [UInt8]
    public let origin: UInt32
    public let entry: UInt32
    /// The IDT (256 interrupt gates), to be placed at `GuestLayout.idt`.
    public let idt: [UInt8]

    public init() throws(X86Assembler.AssemblyError) {
        typealias P = ParameterBlock
        var a = X86Assembler(origin: GuestLayout.code)
        let pageMask: UInt32 = 0xFFFF_F000

        a.label("entry")
        a.load(.eax, from: .esi, disp: P.mode)
        a.cmp(.eax, 1)
        a.j(.equal, "selftest")
        a.xor(.ebp, .ebp)
        a.load(.eax, from: .esi, disp: P.convertEvery)
        a.store(.eax, to: .esi, disp: P.convertCountdown)
        a.load(.eax, from: .esi, disp: P.wrongViewEvery)
        a.store(.eax, to: .esi, disp: P.wrongViewCountdown)
        a.store(imm: 0, to: .esi, disp: P.wrongViewOffset)
        a.store(imm: 0xFFFF_FFFF, to: .esi, disp: P.skipPage)

        a.label("pass")
        a.inc(.ebp)
        a.store(.ebp, to: .esi, disp: P.pass)

        // 0-1. Each word in turn: what the previous pass wrote must still be there (a discard, or a conversion that
        //    lost the data, shows here whenever it happened, not only between a write and its read-back), then this
        //    pass's value. Checked just before it is written, a word's old value is unread only for an instruction
        //    or two: a loss of more than one page can never fall where the guest would not read it (checked all
        //    first and written after, a discard landing between the two went unseen).
        a.store(imm: 0xFFFF_FFFF, to: .esi, disp: P.reportedPage)
        a.load(.edi, from: .esi, disp: P.workingSetBase)
        a.load(.ecx, from: .esi, disp: P.workingSetPages)
        a.shl(.ecx, 12)
        a.add(.ecx, .edi)                       // ecx = end of the working set
        a.load(.ebx, from: .esi, disp: P.stride)
        a.label("write")
        a.cmp(.ebp, 1)
        a.j(.equal, "write.store")              // the first pass has nothing to check
        a.mov(.eax, .edi)
        a.and(.eax, pageMask)
        a.load(.edx, from: .esi, disp: P.skipPage)
        a.cmp(.eax, .edx)
        a.j(.equal, "write.store")              // the page its own wrong-view touch gave away
        a.mov(.eax, .ebp)
        a.dec(.eax)
        a.xor(.eax, .edi)                       // what the previous pass wrote
        a.load(.edx, from: .edi)
        a.cmp(.edx, .eax)
        a.j(.equal, "write.store")
        a.mov(.eax, .edi)                       // one report a page: the first bad word's address
        a.and(.eax, pageMask)
        a.load(.edx, from: .esi, disp: P.reportedPage)
        a.cmp(.eax, .edx)
        a.j(.equal, "write.store")
        a.store(.eax, to: .esi, disp: P.reportedPage)
        a.mov(.eax, .edi)
        a.mov(.edx, UInt32(GuestPort.integrityError))
        a.outDXEAX()
        a.label("write.store")
        a.mov(.eax, .edi)
        a.xor(.eax, .ebp)
        a.store(.eax, to: .edi)
        a.add(.edi, .ebx)
        a.cmp(.edi, .ecx)
        a.j(.below, "write")
        a.store(imm: 0xFFFF_FFFF, to: .esi, disp: P.skipPage)

        // Read back.
        a.load(.edi, from: .esi, disp: P.workingSetBase)
        a.label("check")
        a.mov(.eax, .edi)
        a.xor(.eax, .ebp)
        Self.compareAndAdvance(&a, "check")

        // 2. Bounce buffer through the shared alias, every convertEvery passes.
        a.load(.eax, from: .esi, disp: P.sharedAlias)
        a.cmp(.eax, 0)
        a.j(.equal, "heartbeat")
        a.load(.eax, from: .esi, disp: P.convertEvery)
        a.cmp(.eax, 0)
        a.j(.equal, "wrongview")
        a.load(.eax, from: .esi, disp: P.convertCountdown)
        a.dec(.eax)
        a.store(.eax, to: .esi, disp: P.convertCountdown)
        a.j(.notEqual, "wrongview")
        a.load(.eax, from: .esi, disp: P.convertEvery)
        a.store(.eax, to: .esi, disp: P.convertCountdown)

        a.mov(.eax, 0)                          // to shared
        a.call("doorbell")
        a.j(.notEqual, "wrongview")             // refused: reported, skip the copy
        a.load(.edi, from: .esi, disp: P.bounceBuffer)
        a.load(.eax, from: .esi, disp: P.sharedAlias)
        a.or(.edi, .eax)                        // edi = bounce buffer's shared alias
        a.load(.ecx, from: .esi, disp: P.workingSetBase)   // ecx = source page
        a.mov(.ebx, 0)
        a.label("copy")
        a.mov(.eax, .ecx)
        a.add(.eax, .ebx)
        a.load(.edx, from: .eax)
        a.mov(.eax, .edi)
        a.add(.eax, .ebx)
        a.store(.edx, to: .eax)
        a.add(.ebx, 4)
        a.cmp(.ebx, BuiltInGuest.bounceBytes)
        a.j(.below, "copy")
        a.mov(.ebx, 0)
        a.label("verify")
        a.mov(.eax, .ecx)
        a.add(.eax, .ebx)
        a.load(.edx, from: .eax)
        a.mov(.eax, .edi)
        a.add(.eax, .ebx)
        a.load(.eax, from: .eax)
        a.cmp(.eax, .edx)
        a.j(.equal, "verify.ok")
        a.mov(.eax, .edi)
        a.add(.eax, .ebx)
        a.mov(.edx, UInt32(GuestPort.bounceError))
        a.outDXEAX()
        a.jmp("verify.done")
        a.label("verify.ok")
        a.add(.ebx, 4)
        a.cmp(.ebx, BuiltInGuest.bounceBytes)
        a.j(.below, "verify")
        a.label("verify.done")
        a.mov(.eax, 1)                          // back to private
        a.call("doorbell")

        // 3. Wrong-view touch, every wrongViewEvery passes.
        a.label("wrongview")
        a.load(.eax, from: .esi, disp: P.wrongViewEvery)
        a.cmp(.eax, 0)
        a.j(.equal, "heartbeat")
        a.load(.eax, from: .esi, disp: P.wrongViewCountdown)
        a.dec(.eax)
        a.store(.eax, to: .esi, disp: P.wrongViewCountdown)
        a.j(.notEqual, "heartbeat")
        a.load(.eax, from: .esi, disp: P.wrongViewEvery)
        a.store(.eax, to: .esi, disp: P.wrongViewCountdown)
        a.load(.edi, from: .esi, disp: P.wrongViewOffset)
        a.load(.eax, from: .esi, disp: P.workingSetBase)
        a.add(.eax, .edi)
        a.store(.eax, to: .esi, disp: P.skipPage)
        a.load(.edx, from: .esi, disp: P.sharedAlias)
        a.or(.eax, .edx)
        a.load(.eax, from: .eax)                // the wrong-view read; its value is not used
        a.add(.edi, 0x1000)
        a.load(.ecx, from: .esi, disp: P.workingSetPages)
        a.shl(.ecx, 12)
        a.cmp(.edi, .ecx)
        a.j(.below, "wrongview.store")
        a.mov(.edi, 0)
        a.label("wrongview.store")
        a.store(.edi, to: .esi, disp: P.wrongViewOffset)

        // 4. Heartbeat.
        a.label("heartbeat")
        a.mov(.eax, .ebp)
        a.mov(.edx, UInt32(GuestPort.heartbeat))
        a.outDXEAX()
        a.jmp("pass")

        // doorbell(eax = to-private): converts the bounce buffer; ZF set on success.
        a.label("doorbell")
        a.store(.eax, to: .esi, disp: P.doorbellToPrivate)
        a.load(.eax, from: .esi, disp: P.bounceBuffer)
        a.store(.eax, to: .esi, disp: P.doorbellGPA)
        a.store(imm: 1, to: .esi, disp: P.doorbellPages)
        // doorbell.send: the descriptor (GPA, pages, to-private) is already filled in; ZF set on success.
        a.label("doorbell.send")
        a.store(imm: 0xFFFF_FFFF, to: .esi, disp: P.doorbellStatus)
        a.load(.eax, from: .esi, disp: P.hypercall)
        a.cmp(.eax, GuestRequestInstruction.doorbell.rawValue)
        a.j(.equal, "doorbell.port")
        // KVM_HC_MAP_GPA_RANGE: EBX gpa, ECX pages, EDX attributes (bit 4 encrypted, i.e. private; 4 KiB pages);
        // EAX comes back 0 or a negative errno, kept as the status.
        a.push(.ebx)
        a.push(.ecx)
        a.load(.ebx, from: .esi, disp: P.doorbellGPA)
        a.load(.ecx, from: .esi, disp: P.doorbellPages)
        a.load(.edx, from: .esi, disp: P.doorbellToPrivate)
        a.shl(.edx, 4)
        a.cmp(.eax, GuestRequestInstruction.vmmcall.rawValue)
        a.mov(.eax, UInt32(BuiltInGuest.mapGPARange))  // mov leaves the flags
        a.j(.equal, "doorbell.vmmcall")
        a.vmcall()
        a.jmp("doorbell.answered")
        a.label("doorbell.vmmcall")
        a.vmmcall()
        a.label("doorbell.answered")
        a.pop(.ecx)
        a.pop(.ebx)
        a.store(.eax, to: .esi, disp: P.doorbellStatus)
        a.jmp("doorbell.status")
        a.label("doorbell.port")
        a.mov(.eax, .esi)
        a.add(.eax, UInt32(P.doorbellGPA))
        a.mov(.edx, UInt32(GuestPort.doorbell))
        a.outDXEAX()
        a.label("doorbell.status")
        a.load(.eax, from: .esi, disp: P.doorbellStatus)
        a.cmp(.eax, 0)
        a.j(.equal, "doorbell.done")
        a.mov(.edx, UInt32(GuestPort.doorbellFailed))
        a.outDXEAX()
        a.cmp(.eax, 0)                          // ZF clear again for the caller
        a.label("doorbell.done")
        a.ret()

        Self.emitSelftest(&a)

        // NMI (vector 2): report and return.
        Self.reportingHandler(&a, "nmi", vector: 2, port: GuestPort.nmiSeen)
        // #MC (vector 18): report and return. A real handler would clear MCG_STATUS.MCIP with wrmsr; the
        // software KVM on this project's machines fails to emulate that wrmsr (KVM_EXIT_INTERNAL_ERROR), so
        // MCIP stays set and a second #MC is a shutdown, as on hardware whose handler did not clear it.
        Self.reportingHandler(&a, "mc", vector: 18, port: GuestPort.mceSeen)

        // Any other vector: report it and stop.
        for vector in 0..<33 where vector != 2 && vector != 18 {
            a.label("exception.\(vector)")
            a.mov(.eax, UInt32(vector))
            a.jmp("exception")
        }
        a.label("exception")
        a.mov(.edx, UInt32(GuestPort.exception))
        a.outDXEAX()
        a.label("halt")
        a.hlt()
        a.jmp("halt")

        code = try a.assemble()
        origin = GuestLayout.code
        entry = a.address(of: "entry")!

        var table: [UInt8] = []
        for vector in 0..<256 {
            let handler: String
            switch vector {
            case 2: handler = "nmi"
            case 18: handler = "mc"
            case 0..<32: handler = "exception.\(vector)"
            default: handler = "exception.32"
            }
            let offset = a.address(of: handler)!
            let low = UInt32(FlatSelectors.code) << 16 | (offset & 0xFFFF)
            let high = (offset & 0xFFFF_0000) | 0x8E00      // present, DPL 0, 32-bit interrupt gate
            for word in [low, high] { for i in 0..<4 { table.append(UInt8(truncatingIfNeeded: word >> (8 * UInt32(i)))) } }
        }
        idt = table
    }
}

extension BuiltInGuest {
    /// The body of a working-set check loop named `name`: compares the word at EDI with EAX; a mismatch is
    /// reported on `GuestPort.integrityError` and the rest of that page skipped (`name.skip` lands there too);
    /// EDI advances by EBX and the loop goes on while EDI < ECX.
    static func compareAndAdvance(_ a: inout X86Assembler, _ name: String) {
        a.load(.edx, from: .edi)
        a.cmp(.edx, .eax)
        a.j(.equal, "\(name).ok")
        a.mov(.eax, .edi)
        a.mov(.edx, UInt32(GuestPort.integrityError))
        a.outDXEAX()
        a.label("\(name).skip")
        a.and(.edi, 0xFFFF_F000)                // one report per page: skip to the next page
        a.add(.edi, 0x1000)
        a.jmp("\(name).next")
        a.label("\(name).ok")
        a.add(.edi, .ebx)
        a.label("\(name).next")
        a.cmp(.edi, .ecx)
        a.j(.below, name)
    }

    /// An interrupt handler at `label` that reports `vector` on `port` and returns to the interrupted code.
    static func reportingHandler(_ a: inout X86Assembler, _ label: String, vector: UInt32, port: UInt16) {
        a.label(label)
        a.pushad()
        a.mov(.eax, vector)
        a.mov(.edx, UInt32(port))
        a.outDXEAX()
        a.popad()
        returnFromInterrupt(&a)
    }

    /// Returns from an interrupt without `iret`: KVM's instruction emulator handles `iret` in real mode only,
    /// and under the software KVM on this project's machines every guest instruction goes through it.
    /// The frame is EIP, CS, EFLAGS (same privilege level); only `mov`, `pop`, `lea` and `ret` run, so the
    /// interrupted code's arithmetic flags survive. IF stays as the interrupted code had it (the guest runs
    /// with interrupts off). Without `iret` KVM keeps NMIs blocked, so a second NMI waits (see README).
    static func returnFromInterrupt(_ a: inout X86Assembler) {
        a.push(.eax)                     // eax, eip, cs, eflags
        a.load(.eax, from: .esp, disp: 4)
        a.store(.eax, to: .esp, disp: 12) // eax, eip, cs, eip
        a.pop(.eax)                      // eip, cs, eip
        a.lea(.esp, .esp, disp: 8)       // eip
        a.ret()
    }
}

extension BuiltInGuest {
    /// The conversion selftest (parameter `mode` = 1), after the kernel's private_mem_conversions_test. For each
    /// (offset, size) of `SelftestPhase.ranges` inside its working set, each vCPU:
    /// 1. writes `gpa ^ initialKey` over the whole region through the private view and checks it;
    /// 2. asks through the doorbell for the range to become shared;
    /// 3. writes `gpa ^ sharedKey` over the range through the alias; syncs (`sharedWritten`);
    /// 4. checks the range reads `gpa ^ hostKey` through the alias, and the rest of the region still reads
    ///    `gpa ^ initialKey` privately;
    /// 5. asks for the range back private, writes `gpa ^ privateKey` through the private view, syncs
    ///    (`privateWritten`), and checks it reads back.
    /// Mismatches go to `GuestPort.integrityError` (the address read); after every pass over the table the
    /// pass counter goes to `GuestPort.heartbeat`, and the test starts again.
    static func emitSelftest(_ a: inout X86Assembler) {
        typealias P = ParameterBlock
        typealias K = SelftestPhase

        a.label("selftest")
        a.xor(.ebp, .ebp)
        a.label("selftest.pass")
        a.inc(.ebp)
        a.mov(.eax, address: "selftest.ranges")
        a.store(.eax, to: .esi, disp: P.selftestEntry)
        a.label("selftest.range")
        a.load(.ebx, from: .esi, disp: P.selftestEntry)
        a.load(.ecx, from: .ebx, disp: 4)
        a.cmp(.ecx, 0)
        a.j(.equal, "selftest.done")
        a.load(.eax, from: .ebx)
        a.load(.edx, from: .esi, disp: P.workingSetBase)
        a.add(.eax, .edx)
        a.store(.eax, to: .esi, disp: P.selftestGPA)
        a.store(.ecx, to: .esi, disp: P.selftestSize)

        // 1. The whole region private, initialKey.
        regionBounds(&a)
        a.mov(.ebx, K.initialKey)
        a.mov(.edx, 0)
        a.call("selftest.fill")
        regionBounds(&a)
        a.call("selftest.verify")

        // 2-3. Shared; write through the alias; the host checks and answers.
        a.mov(.eax, 0)
        a.call("selftest.doorbell")
        rangeBounds(&a)
        a.mov(.ebx, K.sharedKey)
        a.load(.edx, from: .esi, disp: P.sharedAlias)
        a.call("selftest.fill")
        a.mov(.eax, K.sharedWritten.rawValue)
        a.mov(.edx, UInt32(GuestPort.selftestSync))
        a.outDXEAX()

        // 4. The host's bytes through the alias; the rest of the region untouched.
        rangeBounds(&a)
        a.mov(.ebx, K.hostKey)
        a.load(.edx, from: .esi, disp: P.sharedAlias)
        a.call("selftest.verify")
        a.load(.edi, from: .esi, disp: P.workingSetBase)
        a.load(.ecx, from: .esi, disp: P.selftestGPA)
        a.mov(.ebx, K.initialKey)
        a.mov(.edx, 0)
        a.call("selftest.verify")
        rangeBounds(&a)
        a.mov(.edi, .ecx)
        a.load(.ecx, from: .esi, disp: P.workingSetPages)
        a.shl(.ecx, 12)
        a.load(.eax, from: .esi, disp: P.workingSetBase)
        a.add(.ecx, .eax)
        a.call("selftest.verify")

        // 5. Private again; write privately; the host checks nothing leaked.
        a.mov(.eax, 1)
        a.call("selftest.doorbell")
        rangeBounds(&a)
        a.mov(.ebx, K.privateKey)
        a.mov(.edx, 0)
        a.call("selftest.fill")
        a.mov(.eax, K.privateWritten.rawValue)
        a.mov(.edx, UInt32(GuestPort.selftestSync))
        a.outDXEAX()
        rangeBounds(&a)
        a.mov(.ebx, K.privateKey)
        a.mov(.edx, 0)
        a.call("selftest.verify")

        a.addMemory(8, at: .esi, disp: P.selftestEntry)
        a.jmp("selftest.range")
        a.label("selftest.done")
        a.mov(.eax, .ebp)
        a.mov(.edx, UInt32(GuestPort.heartbeat))
        a.outDXEAX()
        a.jmp("selftest.pass")

        // selftest.doorbell(eax = to-private): converts [selftestGPA, +selftestSize).
        a.label("selftest.doorbell")
        a.store(.eax, to: .esi, disp: P.doorbellToPrivate)
        a.load(.eax, from: .esi, disp: P.selftestGPA)
        a.store(.eax, to: .esi, disp: P.doorbellGPA)
        a.load(.eax, from: .esi, disp: P.selftestSize)
        a.shr(.eax, 12)
        a.store(.eax, to: .esi, disp: P.doorbellPages)
        a.jmp("doorbell.send")

        // selftest.fill(edi = start, ecx = end, ebx = key, edx = view mask): [p | mask] = p ^ key every stride.
        a.label("selftest.fill")
        a.push(.ebp)
        a.label("selftest.fill.loop")
        a.cmp(.edi, .ecx)
        a.j(.aboveOrEqual, "selftest.fill.done")
        a.mov(.eax, .edi)
        a.xor(.eax, .ebx)
        a.mov(.ebp, .edi)
        a.or(.ebp, .edx)
        a.store(.eax, to: .ebp)
        a.load(.eax, from: .esi, disp: P.stride)
        a.add(.edi, .eax)
        a.jmp("selftest.fill.loop")
        a.label("selftest.fill.done")
        a.pop(.ebp)
        a.ret()

        // selftest.verify(edi = start, ecx = end, ebx = key, edx = view mask): reports the first bad word of
        // each page on GuestPort.integrityError.
        a.label("selftest.verify")
        a.push(.ebp)
        a.label("selftest.verify.loop")
        a.cmp(.edi, .ecx)
        a.j(.aboveOrEqual, "selftest.verify.done")
        a.mov(.ebp, .edi)
        a.or(.ebp, .edx)
        a.load(.eax, from: .ebp)
        a.xor(.eax, .edi)
        a.cmp(.eax, .ebx)
        a.j(.equal, "selftest.verify.ok")
        a.mov(.eax, .ebp)
        a.push(.edx)
        a.mov(.edx, UInt32(GuestPort.integrityError))
        a.outDXEAX()
        a.pop(.edx)
        a.and(.edi, 0xFFFF_F000)
        a.add(.edi, 0x1000)
        a.jmp("selftest.verify.loop")
        a.label("selftest.verify.ok")
        a.load(.eax, from: .esi, disp: P.stride)
        a.add(.edi, .eax)
        a.jmp("selftest.verify.loop")
        a.label("selftest.verify.done")
        a.pop(.ebp)
        a.ret()

        a.align(4)
        a.label("selftest.ranges")
        for r in K.ranges {
            a.data32(r.offset)
            a.data32(r.size)
        }
        a.data32(0)
        a.data32(0)
    }

    /// edi = working-set base, ecx = its end.
    private static func regionBounds(_ a: inout X86Assembler) {
        a.load(.edi, from: .esi, disp: ParameterBlock.workingSetBase)
        a.load(.ecx, from: .esi, disp: ParameterBlock.workingSetPages)
        a.shl(.ecx, 12)
        a.add(.ecx, .edi)
    }

    /// edi = selftestGPA, ecx = selftestGPA + selftestSize.
    private static func rangeBounds(_ a: inout X86Assembler) {
        a.load(.edi, from: .esi, disp: ParameterBlock.selftestGPA)
        a.load(.ecx, from: .esi, disp: ParameterBlock.selftestSize)
        a.add(.ecx, .edi)
    }
}

/// The flat code selector the GDT gives the guest (entry 1).
enum FlatSelectors { static let code: UInt16 = 0x08 }
