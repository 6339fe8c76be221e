import Foundation

/// What /proc says of a process and its threads, as people name them.
public enum HostProcess {
    /// The vCPU index a thread's name gives: QEMU's "CPU N/KVM", vmscope's "vmscope/vcpu N".
    public static func vcpuIndex(threadName: String) -> Int? {
        let name = threadName.trimmingCharacters(in: .whitespacesAndNewlines)
        if name.hasPrefix("CPU "), name.hasSuffix("/KVM") { return Int(name.dropFirst(4).dropLast(4)) }
        if name.hasPrefix(VCPUThreadName.vmscope) { return Int(name.dropFirst(VCPUThreadName.vmscope.count)) }
        return nil
    }

    /// A process's name as people know it: QEMU's `-name` (guest=NAME or NAME), else its command.
    public static func name(pid: Int32) -> String {
        name(pid: pid, cmdline: readPseudoFile("/proc/\(pid)/cmdline"), command: command(pid: pid))
    }

    /// The same from a command line and command name read already (`command(pid:)`, /proc/PID/cmdline).
    public static func name(pid: Int32, cmdline: String?, command: String?) -> String {
        let args = (cmdline ?? "").split(separator: "\0").map(String.init)
        return qemuName(args) ?? command ?? args.first ?? "pid \(pid)"
    }

    /// The process's command name (/proc/PID/comm, trimmed); nil when it cannot be read.
    public static func command(pid: Int32) -> String? {
        readPseudoFile("/proc/\(pid)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// QEMU's `-name guest=NAME,...` (or `-name NAME,...`): NAME.
    static func qemuName(_ args: [String]) -> String? {
        guard let i = args.firstIndex(of: "-name"), i + 1 < args.count else { return nil }
        let v = args[i + 1]
        let guest = v.split(separator: ",").first { $0.hasPrefix("guest=") }.map { String($0.dropFirst(6)) }
        return guest ?? String(v.split(separator: ",").first ?? "")
    }

    /// The libvirt domain a QEMU process runs (name and UUID from its `-name guest=NAME` and `-uuid`), when libvirt's
    /// QEMU driver started it: its pid file for that name (`/run/libvirt/qemu/NAME.pid`) holds this pid. nil for any
    /// other process, whatever it calls itself.
    public static func libvirtDomain(pid: Int32, runDirectory: String = "/run/libvirt/qemu") -> (name: String, uuid: String)? {
        libvirtDomain(pid: pid, cmdline: readPseudoFile("/proc/\(pid)/cmdline"), runDirectory: runDirectory)
    }

    /// The same from its command line read already.
    public static func libvirtDomain(pid: Int32, cmdline: String?, runDirectory: String = "/run/libvirt/qemu") -> (name: String, uuid: String)? {
        guard let raw = cmdline else { return nil }
        let args = raw.split(separator: "\0").map(String.init)
        guard let name = qemuName(args), !name.isEmpty, !name.contains("/"),
              let u = args.firstIndex(of: "-uuid"), u + 1 < args.count,
              let recorded = readPseudoFile("\(runDirectory)/\(name).pid").flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
              recorded == pid else { return nil }
        return (name, args[u + 1])
    }

    /// Whether the process holds a KVM VM now (a file descriptor on `anon_inode:kvm-vm`). Asked after tracing is
    /// on, a no says that every VM it will have is created under the trace. Where its descriptors cannot be read,
    /// yes: nothing is known of what came before.
    public static func hasVM(pid: Int32) -> Bool {
        let dir = "/proc/\(pid)/fd"
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return true }
        for fd in fds {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + fd), target == "anon_inode:kvm-vm" { return true }
        }
        return false
    }
}

/// How vCPU threads are named.
public enum VCPUThreadName {
    /// vmscope's VMM (`VCPURunner.threadNamePrefix`).
    public static let vmscope = "vmscope/vcpu "
}

extension HostVMs {
    /// The control socket a VMM process was started with, from its command line: vmscope's `--socket PATH`, QEMU's
    /// `-qmp unix:PATH[,...]`; nil when there is none to find.
    public static func controlSocket(pid: Int32) -> String? {
        controlSocket(cmdline: readPseudoFile("/proc/\(pid)/cmdline"))
    }

    /// The same from its command line read already.
    public static func controlSocket(cmdline: String?) -> String? {
        guard let raw = cmdline else { return nil }
        let args = raw.split(separator: "\0", omittingEmptySubsequences: false).map(String.init)
        for (i, a) in args.enumerated() where i + 1 < args.count {
            if a == "--socket" { return args[i + 1] }
            if a == "-qmp", args[i + 1].hasPrefix("unix:") {
                return String(args[i + 1].dropFirst(5).split(separator: ",").first ?? "")
            }
        }
        if let s = args.first(where: { $0.hasPrefix("--socket=") }) { return String(s.dropFirst(9)) }
        return nil
    }
}
