import Foundation
import KVM

/// What the KVM of the machine the tests run on offers, asked once with `KVM_CHECK_EXTENSION` (the probe the VMM
/// itself uses). Tests that touch KVM expect the behaviour promised for these answers, never a remembered value,
/// and those that need a capability the host lacks skip with a reason naming it.
public enum HostKVM {
    /// The probe's answers; nil where /dev/kvm is absent or cannot be opened.
    public static let capabilities: KVMCapabilities? = {
        guard kvmPresent, let system = try? KVMSystem(), let caps = try? KVMCapabilities.probe(system) else { return nil }
        // Once per test process: CI's log says under which capability set the suites ran.
        print("host KVM for the tests: \(describe(caps))")
        return caps
    }()

    /// The running kernel's release (`uname -r`).
    public static let kernel: String = {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }()

    /// One line: the kernel and its guest_memfd and memory-attributes answers, on the system fd and per VM type.
    public static func describe(_ c: KVMCapabilities) -> String {
        let perType = c.perVMType.map { t in
            t.created ? "type \(t.type.rawValue): guest_memfd \(t.guestMemfd.map { $0 ? 1 : 0 }.map(String.init) ?? "?")"
                + " flags 0x\(String(t.guestMemfdFlags.rawValue, radix: 16)) attributes 0x\(String(t.memoryAttributes, radix: 16))"
                : "type \(t.type.rawValue): not created"
        }.joined(separator: "; ")
        return "kernel \(kernel): KVM_CAP_GUEST_MEMFD \(c.guestMemfd ? 1 : 0), KVM_CAP_GUEST_MEMFD_FLAGS 0x\(String(c.guestMemfdFlags.rawValue, radix: 16))"
            + " \(c.guestMemfdFlags.names), KVM_CAP_MEMORY_ATTRIBUTES 0x\(String(c.memoryAttributes, radix: 16)) (\(perType))"
    }

    /// guest_memfd on a default (type 0) VM, the one the vmm engine and the KVM tests create.
    public static var guestMemfd: Bool { capabilities?.guestMemfd(on: .default) ?? false }

    /// `KVM_CAP_GUEST_MEMFD_FLAGS` on a default VM.
    public static var guestMemfdFlags: GuestMemfdFlags { capabilities?.guestMemfdFlags(on: .default) ?? [] }

    /// A guest_memfd on a default VM that the VMM can map and that starts shared, so that host and guest both
    /// reach it (`MMAP|INIT_SHARED`).
    public static var mappableGuestMemfd: Bool { guestMemfd && guestMemfdFlags.isSuperset(of: [.mmap, .initShared]) }

    /// Why a test that needs a default VM's guest_memfd cannot run here, naming the capability; nil where it can.
    public static var guestMemfdMissing: String? {
        guard let c = capabilities else { return "/dev/kvm is absent" }
        if !c.guestMemfd { return "this kernel (\(kernel)) has no guest_memfd: KVM_CAP_GUEST_MEMFD is 0 (the same test runs in the lab)" }
        if !guestMemfd { return "a default VM on this kernel (\(kernel)) has no guest_memfd: its KVM_CAP_GUEST_MEMFD is 0" }
        return nil
    }

    /// Why a test that needs a mappable, initially shared guest_memfd cannot run here, naming the capability.
    public static var mappableGuestMemfdMissing: String? {
        if let missing = guestMemfdMissing { return missing }
        if !mappableGuestMemfd {
            return "KVM_CAP_GUEST_MEMFD_FLAGS on a default VM is 0x\(String(guestMemfdFlags.rawValue, radix: 16)) on this kernel (\(kernel)): MMAP|INIT_SHARED needed"
        }
        return nil
    }

    /// How the vmm engine backs private RAM on this host, in `query-memslots`' words: `guest_memfd` or `memfd`.
    public static var vmmPrivateBacking: String { guestMemfd ? "guest_memfd" : "memfd" }
}
