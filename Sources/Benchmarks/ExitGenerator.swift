import Foundation
import GuestCode
import KVM

/// A KVM exit source at a set rate, for the tracers' drop-free rate (`tracerRateSweep`): a VM of one vCPU whose guest
/// writes port 0x80 and loops, run from this process's only thread. Each KVM_RUN returns with one I/O exit to
/// userspace, and so one `kvm_userspace_exit` event of this thread (and one `sys_exit_ioctl`, `kvm_exit`, … where
/// those are traced), so the events a tracer should see are the runs it made. It waits for `gate` to exist (the
/// tracer is tracing; `ready` is called once the VM runs and the wait begins), then makes `rate` exits a second (0: as
/// many as it can) for `seconds`, in bursts every millisecond (what is due by then: no CPU spent waiting, which the
/// tracer shares), and returns what it made.
public func runExitGenerator(rate: Double, seconds: Double, gate: String, ready: () -> Void) throws -> (exits: UInt64, seconds: Double) {
    let system = try KVMSystem()
    let vm = try system.createVM(type: .default)
    let size = 0x10000
    let memory = try HostMapping.anonymous(size: size)
    try vm.setUserMemoryRegion(MemoryRegion(slot: 0, guestPhysicalAddress: 0, size: UInt64(size), userspaceAddress: memory.address))
    let gdt = 0x1000, code: UInt32 = 0x2000
    memory.write(FlatProtectedMode.gdtBytes, at: gdt)
    var asm = X86Assembler(origin: code)
    asm.label("top")
    asm.outAL(port: 0x80)
    asm.jmp("top")
    memory.write(try asm.assemble(), at: Int(code))
    let vcpu = try vm.createVCPU(id: 0)
    var sregs = try vcpu.specialRegisters()
    FlatProtectedMode.configure(&sregs, gdtBase: UInt64(gdt))
    try vcpu.setSpecialRegisters(sregs)
    try vcpu.setRegisters(FlatProtectedMode.registers(entry: UInt64(code), stack: 0x8000))
    // One exit before the gate: the guest runs, and the VM's first-run costs are not in the window.
    func exitOnce() throws {
        while true {
            switch try vcpu.run() {
            case .interrupted: continue
            case .ioOut(port: 0x80, _, _, _): return
            case let other: throw BenchError("the generator's guest exited with \(other.reason.name), not its port write")
            }
        }
    }
    try exitOnce()
    ready()
    let deadline = nowNs() + 120_000_000_000
    while access(gate, F_OK) != 0 {
        guard nowNs() < deadline else { throw BenchError("no tracer opened the gate \(gate) in 120 s") }
        usleep(5_000)
    }
    let start = nowNs(), end = start + UInt64(seconds * 1e9)
    var made: UInt64 = 0
    var tick = timespec()
    clock_gettime(CLOCK_MONOTONIC, &tick)
    while true {
        let now = nowNs()
        guard now < end else { break }
        let due = rate > 0 ? UInt64(rate * Double(now - start) / 1e9) : made + 1024
        // A burst ends at the window's end too: a generator slower than the rate asked would otherwise chase it past.
        while made < due {
            try exitOnce()
            made += 1
            if made & 63 == 0, nowNs() >= end { break }
        }
        if rate > 0 {
            // The next millisecond, on an absolute clock: bursts keep the set rate whatever a burst took.
            tick.tv_nsec += 1_000_000
            if tick.tv_nsec >= 1_000_000_000 { tick.tv_nsec -= 1_000_000_000; tick.tv_sec += 1 }
            _ = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &tick, nil)
        }
    }
    return (made, Double(nowNs() - start) / 1e9)
}
