import ControlProtocol
import Foundation
import ProcessSupport
#if canImport(Glibc)
import Glibc
#endif

/// The nested KVM lab: QEMU TCG (`-cpu max`: AMD SVM with nested paging) booting a small Linux (7.3 or 6.12) with
/// `CONFIG_KVM_SW_PROTECTED_VM=y`, in which `/dev/kvm` offers `KVM_X86_SW_PROTECTED_VM` with memory attributes,
/// so the kernel engine and real `KVM_EXIT_MEMORY_FAULT`s run. The host's files are shared read-only over 9p
/// and the lab runs the same vmscope binary at the same path; see README "The kernel-engine lab".
public enum Lab {
    /// The lab's kernels: Debian's `linux-source-VERSION`, each built from tinyconfig, `kvm-lab.config` and its own
    /// `kvm-lab-VERSION.config` when it has one, and cached apart.
    public enum Kernel: String, CaseIterable, Sendable, CustomStringConvertible {
        /// trixie-backports: `kvm:kvm_vm_set_mem_attributes` (traced conversions) and today's KVM.
        case v7_3 = "7.3"
        /// trixie (Debian stable): no memory-attributes tracepoint.
        case v6_12 = "6.12"

        public static let newest = Kernel.v7_3
        /// `$VMSCOPE_LAB_KERNEL` when it names one, else the newest.
        public static var preferred: Kernel {
            ProcessInfo.processInfo.environment["VMSCOPE_LAB_KERNEL"].flatMap(Kernel.init(rawValue:)) ?? newest
        }
        public var description: String { "Linux \(rawValue)" }
        /// The Debian suite its source package comes from.
        public var suite: String { self == .v7_3 ? "trixie-backports" : "trixie" }
    }

    /// The cache of built kernels and initramfs images: `$VMSCOPE_LAB_DIR`, else `~/.cache/vmscope/lab`.
    public static var cacheRoot: String {
        if let d = ProcessInfo.processInfo.environment["VMSCOPE_LAB_DIR"], !d.isEmpty { return d }
        let home = ProcessInfo.processInfo.environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "/root"
        return home + "/.cache/vmscope/lab"
    }

    /// The lab's inputs shipped with vmscope: `kvm-lab.config`, `init`, `build.sh`.
    public static var inputs: String {
        // The bundle holds the folder `Resources` (a .copy); Foundation's resourceURL may already name it.
        let base = Bundle.module.bundleURL
        let nested = base.appendingPathComponent("Resources")
        return FileManager.default.fileExists(atPath: nested.appendingPathComponent("build.sh").path) ? nested.path : base.path
    }

    public static var qemu: String? { QEMUInstance.binary }

    /// What a run needs, built.
    public struct Artifacts: Sendable {
        public var kernel: String
        public var initrd: String
        /// Which of the lab's kernels.
        public var version: Kernel
    }

    /// Why the lab cannot start here, in one line with the command that fixes it; nil when it can.
    public static func unavailable(_ kernel: Kernel = .preferred) -> String? {
        if case .failure(let why) = ready(kernel) { return why.description }
        return nil
    }

    /// The built lab, or why it cannot start here (QEMU missing, or not built for these inputs).
    public static func ready(_ kernel: Kernel = .preferred) -> Result<Artifacts, LabError> {
        guard qemu != nil else {
            return .failure(LabError("the lab needs QEMU: apt-get install qemu-system-x86 (then vmscope lab build --kernel \(kernel.rawValue))"))
        }
        return locate(kernel)
    }

    /// The built kernel and initramfs for the current inputs, without building or going online.
    public static func locate(_ kernel: Kernel = .preferred) -> Result<Artifacts, LabError> {
        var env = ProcessInfo.processInfo.environment
        env["LAB_ROOT"] = cacheRoot
        env["LAB_INPUTS"] = inputs
        env["LAB_KERNEL"] = kernel.rawValue
        env["LAB_CHECK_ONLY"] = "1"
        let out = runScript(env: env, echo: false)
        guard out.status == 0 else {
            return .failure(LabError("the lab's \(kernel) is not built for these inputs (\(cacheRoot)): run vmscope lab build --kernel \(kernel.rawValue) (about 10 minutes the first time)"))
        }
        var image: String?, initrd: String?
        for line in out.lines {
            if line.hasPrefix("kernel ") { image = String(line.dropFirst(7)) }
            if line.hasPrefix("initrd ") { initrd = String(line.dropFirst(7)) }
        }
        guard let image, let initrd else { return .failure(LabError("the lab build script gave no kernel/initrd paths")) }
        return .success(Artifacts(kernel: image, initrd: initrd, version: kernel))
    }

    /// Builds or reuses the kernel and initramfs; progress goes to standard error. Returns the exit status.
    public static func build(_ kernel: Kernel = .preferred, jobs: Int?) -> (status: Int32, artifacts: Artifacts?) {
        var env = ProcessInfo.processInfo.environment
        env["LAB_ROOT"] = cacheRoot
        env["LAB_INPUTS"] = inputs
        env["LAB_KERNEL"] = kernel.rawValue
        if let jobs { env["JOBS"] = String(jobs) }
        let out = runScript(env: env, echo: true)
        guard out.status == 0 else { return (out.status, nil) }
        if case .success(let a) = locate(kernel) { return (0, a) }
        return (1, nil)
    }

    /// Runs `build.sh` with `env`, its output echoed to stderr when `echo`; returns its status and lines.
    private static func runScript(env: [String: String], echo: Bool) -> (status: Int32, lines: [String]) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [inputs + "/build.sh"]
        p.environment = env
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = echo ? FileHandle.standardError : FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { return (127, ["cannot run build.sh: \(error)"]) }
        var lines: [String] = []
        var pending = Data()
        let h = pipe.fileHandleForReading
        while true {
            let chunk = h.availableData
            if chunk.isEmpty { break }
            pending.append(chunk)
            while let nl = pending.firstIndex(of: 0x0A) {
                let line = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...nl)
                lines.append(line)
                if echo { FileHandle.standardError.write(Data((line + "\n").utf8)) }
            }
        }
        p.waitUntilExit()
        return (p.terminationStatus, lines)
    }

    /// `'…'`-quotes `s` for the job script's sh.
    public static func shellQuote(_ s: String) -> String {
        "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }
}

/// One boot of the lab guest running a job script, with its serial console in a file and its control port on a
/// Unix socket QEMU serves in a private directory.
public final class LabMachine: @unchecked Sendable {
    // @unchecked: constants, and `process` is internally locked.
    public let directory: String
    public let process: ChildProcess
    public let consoleLog: String
    public let linkSocket: String
    public static let portName = "vmscope.ctl"

    public struct Options: Sendable {
        public var cpus = 2
        public var memoryMiB = 2048
        public init() {}
    }

    /// Boots the lab with `job` (sh script text, run chrooted into the host's files at the same paths).
    public init(artifacts: Lab.Artifacts, job: String, options: Options = Options()) throws {
        guard let qemu = Lab.qemu else { throw LabError("the lab needs QEMU: apt-get install qemu-system-x86") }
        // The job folder must be visible to the guest at the same path, so not under /run or a tmpfs only here;
        // it lives in the lab cache, private (0700).
        let jobs = Lab.cacheRoot + "/jobs"
        try FileManager.default.createDirectory(atPath: jobs, withIntermediateDirectories: true)
        var template = Array((jobs + "/run-XXXXXX").utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw LabError("mkdtemp in \(jobs): \(String(cString: strerror(errno)))")
        }
        directory = String(cString: dir)
        consoleLog = directory + "/console.log"
        linkSocket = directory + "/link.sock"
        let jobPath = directory + "/job.sh"
        try job.write(toFile: jobPath, atomically: true, encoding: .utf8)
        let argv = [
            // One core per socket: SeaBIOS's MP table (the lab kernel has no ACPI) lists only the first core of a socket.
            // One TCG thread for all CPUs: with multi-threaded TCG, a nested guest whose memslots churn (a
            // conversion of 1 MiB, then 256 implicit conversions back) took #GP with a garbage ESP or shut down in
            // 2 runs of 6, the mark of a cross-CPU flush race in TCG's SVM/NPT emulation; single-threaded, 18 of 18
            // ran clean, at about two thirds of the speed.
            qemu, "-accel", "tcg,thread=single", "-cpu", "max", "-smp", "\(options.cpus),sockets=\(options.cpus),cores=1", "-m", "\(options.memoryMiB)M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", artifacts.kernel, "-initrd", artifacts.initrd,
            // loglevel=5: the kernel's warnings (a KVM WARN_ON) reach the console, its chatter does not.
            // tsc=reliable: TCG's TSC runs off QEMU's one clock for every vCPU, but the kernel, finding no invariant-TSC
            // flag, fell back to refined-jiffies: CLOCK_MONOTONIC (the VMM's duration-ns, the trace's clock) then moved in
            // 4 ms steps, too coarse to time a conversion's steps.
            // no_timer_check: the boot's IO-APIC timer check counts ticks in a busy-wait, and with the host loaded the
            // emulated CPU saw too few: "IO-APIC + timer doesn't work!", a panic (a full test run beside two busy VMMs).
            "-append", "console=ttyS0 loglevel=5 panic=-1 no_timer_check vmscope.job=\(jobPath)" + (Self.hostTSCkHz.map { " tsc_early_khz=\($0) tsc=reliable" } ?? ""),
            "-serial", "file:\(consoleLog)",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-serial-pci",
            "-chardev", "socket,id=ctl,path=\(linkSocket),server=on,wait=off",
            "-device", "virtserialport,chardev=ctl,name=\(Self.portName)",
        ]
        process = try ChildProcess(argv, redirects: .init(stdout: directory + "/qemu.out", stderr: directory + "/qemu.err"))
    }

    /// The host's TSC rate in kHz (from /proc/cpuinfo), which a TCG guest's TSC runs at. The lab kernel has no
    /// ACPI or HPET to calibrate against but the PIT, and under a busy TCG that calibration sometimes fails
    /// ("tsc: Unable to calibrate against PIT"); KVM's vCPUs then never enter the guest (seen: 1 boot in 8).
    /// Given on the command line (`tsc_early_khz`), no calibration is needed.
    static let hostTSCkHz: Int? = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("cpu MHz") {
            guard let value = line.split(separator: ":").last.flatMap({ Double($0.trimmingCharacters(in: .whitespaces)) }),
                  value > 100, value < 100_000 else { return nil }
            return Int(value * 1000)
        }
        return nil
    }()

    /// Connects to the control port's host end once QEMU serves it.
    public func connectLink(timeout: Double = 30) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let fd = try? connectUnixSocket(path: linkSocket) { return fd }
            if let status = process.poll() { throw LabError("QEMU exited with status \(status): \(qemuError())") }
            if Date() > deadline { throw LabError("QEMU did not serve the lab's control port within \(Int(timeout)) s") }
            usleep(50_000)
        }
    }

    public func qemuError() -> String {
        let text = (try? String(contentsOfFile: directory + "/qemu.err", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(5).joined(separator: " / ")
    }

    /// Stops QEMU and removes the job folder.
    public func shutdown() {
        process.terminate(grace: 3)
        if ProcessInfo.processInfo.environment["VMSCOPE_LAB_KEEP"] == nil {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Follows the serial console: calls `line` for each new line, from the start; returns at end of what exists.
    public final class ConsoleReader {
        let path: String
        var offset: UInt64 = 0
        var pending = Data()
        public init(path: String) { self.path = path }
        public func poll(_ line: (String) -> Void) {
            guard let h = FileHandle(forReadingAtPath: path) else { return }
            defer { try? h.close() }
            try? h.seek(toOffset: offset)
            let data = h.readDataToEndOfFile()
            offset += UInt64(data.count)
            pending.append(data)
            while let nl = pending.firstIndex(of: 0x0A) {
                var s = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
                if s.hasSuffix("\r") { s.removeLast() }
                pending.removeSubrange(pending.startIndex...nl)
                line(s)
            }
        }
    }
}

public struct LabError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// The host half of the lab's control link (`vmscope lab run`): serves PATH (0600, root or this uid only, as the
/// VMM's own socket) and carries each client over the link to the lab's agent, which connects it to the VMM.
public final class LabRelay {
    public let socketPath: String
    private let pump: MuxPump
    private var listener: UnixListener?
    private var nextChannel: UInt32 = 1
    private let stopPipe: (read: Int32, write: Int32)
    public private(set) var ready = false
    public var log: (String) -> Void = { _ in }
    public var onReady: () -> Void = {}
    /// Called each round; the owner stops the relay from here (QEMU gone, a signal).
    public var onTick: () -> Void = {}
    public var allowedUID: uid_t = geteuid()

    public init(link: Int32, socketPath: String) {
        self.socketPath = socketPath
        pump = MuxPump(link: link)
        var fds: [Int32] = [0, 0]
        _ = pipe(&fds)
        stopPipe = (fds[0], fds[1])
        setNonBlocking(stopPipe.read)
        setNonBlocking(stopPipe.write)
    }

    /// Safe from a signal handler's thread or another thread: ends `run()`.
    public func requestStop() {
        var b: UInt8 = 1
        _ = write(stopPipe.write, &b, 1)
    }

    public func stop(_ reason: String) { pump.stop(reason) }

    /// Relays until stopped; returns why it stopped. Removes the socket on the way out.
    public func run() -> String {
        pump.extraFDs = [stopPipe.read]
        pump.onTick = { [unowned self] in onTick() }
        pump.onFrame = { [unowned self] m in
            switch m.type {
            case .hello:
                do {
                    let l = try UnixListener(path: socketPath)
                    listener = l
                    pump.extraFDs = [stopPipe.read, l.fd]
                    ready = true
                    log("lab agent: \(String(decoding: m.payload, as: UTF8.self))")
                    onReady()
                } catch {
                    pump.stop("cannot serve \(socketPath): \(error)")
                }
            case .bye:
                pump.stop("the lab's agent stopped: \(String(decoding: m.payload, as: UTF8.self))")
            default:
                break
            }
        }
        // A client closed its write side: pass the half-close on, and keep its replies coming.
        pump.onStreamEnded = { [unowned self] ch in pump.send(.shutWrite, channel: ch) }
        pump.onExtraReadable = { [unowned self] fd in
            if fd == stopPipe.read {
                pump.stop("stopped by a signal")
                return
            }
            guard let listener else { return }
            while let c = listener.accept() {
                guard let cred = peerCredentials(c), cred.uid == 0 || cred.uid == allowedUID else {
                    let uid = peerCredentials(c)?.uid ?? UInt32.max
                    let line = QMP.error(.permissionDenied, "uid \(uid) may not use this VMM's control socket; only root and uid \(allowedUID) may", id: nil).serialized + "\n"
                    _ = line.withCString { send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                    close(c)
                    log("refused a client (uid \(uid))")
                    continue
                }
                guard pump.streams.count < pump.maxChannels else {
                    // As the VMM's own socket says it: one line, then the connection is closed.
                    let line = QMP.error(.genericError, "this lab relays \(pump.maxChannels) clients at once; try again when one has gone", id: nil).serialized + "\n"
                    _ = line.withCString { send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                    close(c)
                    log("refused a client: \(pump.maxChannels) connections already")
                    continue
                }
                let ch = nextChannel
                nextChannel &+= 1
                pump.add(channel: ch, fd: c, label: "pid \(cred.pid)")
                pump.send(.open, channel: ch)
            }
        }
        pump.run()
        listener?.remove()
        for ch in Array(pump.streams.keys) { pump.drop(channel: ch, tellPeer: false) }
        return pump.stopReason ?? "stopped"
    }
}

extension Lab {
    /// Where the VMM inside the lab serves its socket (the agent connects there).
    public static let guestSocket = "/run/vmscope/vm.sock"

    /// The job for `vmscope lab run`: the VMM (kernel engine) in the background, the agent in front; the VMM's
    /// log goes to the serial console.
    public static func runJob(executable: String, vmmArguments: [String]) -> String {
        let vmm = ([executable, "vmm", "--socket", guestSocket, "--attribute-engine", "kernel"] + vmmArguments)
            .map(shellQuote).joined(separator: " ")
        let agent = [executable, "lab", "agent", "--port", LabMachine.portName, "--socket", guestSocket]
            .map(shellQuote).joined(separator: " ")
        return """
        #!/bin/sh
        # vmscope lab run: the reference VMM on the lab's KVM (kernel engine), its socket carried to the host.
        mkdir -p /run/vmscope
        \(vmm) &
        vmm=$!
        \(agent) --vmm-pid "$vmm"
        status=$?
        kill -TERM "$vmm" 2>/dev/null
        wait "$vmm"
        exit $status

        """
    }

    /// The job for `vmscope lab exec`: `command` in `directory`, its output on the console between markers.
    public static func execJob(directory: String, command: [String], environment: [String: String]) -> String {
        let exports = environment.sorted { $0.key < $1.key }.map { "export \($0.key)=\(shellQuote($0.value))" }
        return """
        #!/bin/sh
        # vmscope lab exec: one command in the lab guest.
        \(exports.joined(separator: "\n"))
        cd \(shellQuote(directory)) || exit 126
        # The console carries the command's output: a kernel message printed in the middle of it (a stall warning
        # while the host is loaded) broke the JSON a test read. The kernel's warnings come after it instead.
        echo 1 > /proc/sys/kernel/printk 2>/dev/null
        echo "VMSCOPE-LAB: output begins"
        \(command.map(shellQuote).joined(separator: " ")) 2>&1
        status=$?
        echo "VMSCOPE-LAB: output ends"
        echo 5 > /proc/sys/kernel/printk 2>/dev/null
        dmesg -l emerg,alert,crit,err,warn 2>/dev/null | tail -n 20
        exit $status

        """
    }

    /// The path of the running executable (the lab runs the same file through 9p).
    public static var currentExecutable: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }
}
