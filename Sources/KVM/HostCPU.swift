import Foundation

/// The host CPU's virtualization extension, as /proc/cpuinfo's flags name it. A hardware KVM runs on one of
/// them; a software KVM (PVM) has neither, and some instructions a guest uses to talk to KVM (`vmcall`) do not work there.
public enum HostCPU {
    public enum Virtualization: String, Sendable {
        /// Intel VT-x: the hypercall instruction is `vmcall`.
        case vmx
        /// AMD-V: `vmmcall`.
        case svm
    }

    /// From /proc/cpuinfo (or `cpuinfo`, its text); nil with neither flag.
    public static func virtualization(cpuinfo: String? = nil) -> Virtualization? {
        let text = cpuinfo ?? ((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "")
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return nil }
        let flags = Set(line.split(separator: " ").map(String.init))
        return flags.contains(Virtualization.vmx.rawValue) ? .vmx : flags.contains(Virtualization.svm.rawValue) ? .svm : nil
    }
}
