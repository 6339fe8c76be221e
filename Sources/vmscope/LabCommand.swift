import ArgumentParser
import ControlProtocol
import Foundation
import Lab
import ProcessSupport
import VMM
#if canImport(Glibc)
import Glibc
#endif

/// `vmscope lab`: the nested KVM lab in which the kernel engine runs (README, "The kernel-engine lab").
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab",
        abstract: "The nested KVM lab: Linux 7.3 or 6.12 with KVM_X86_SW_PROTECTED_VM under QEMU TCG, for the kernel engine.",
        subcommands: [LabBuildCommand.self, LabRunCommand.self, LabExecCommand.self, LabAgentCommand.self])
}

struct LabBuildCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Build (or reuse) the lab's kernel and initramfs, cached by their inputs in $VMSCOPE_LAB_DIR or ~/.cache/vmscope/lab.")

    @Option(help: "Parallel make jobs (default: the number of CPUs).") var jobs: Int?
    @Option(help: "The lab kernel: 7.3 (Debian trixie-backports, the default) or 6.12 (trixie); each is cached apart.")
    var kernel = Lab.Kernel.preferred

    func run() throws {
        var err = StandardError()
        let started = Date()
        let (status, artifacts) = Lab.build(kernel, jobs: jobs)
        guard status == 0, let artifacts else {
            print("vmscope lab build: failed (status \(status)); the output above says where", to: &err)
            throw ExitCode(status == 0 ? 1 : status)
        }
        print("kernel \(artifacts.kernel)")
        print("initrd \(artifacts.initrd)")
        print("vmscope lab build: ready in \(Int(Date().timeIntervalSince(started))) s", to: &err)
    }
}

/// Options of the lab guest itself.
struct LabMachineOptions: ParsableArguments {
    @Option(name: .customLong("lab-cpus"), help: "CPUs of the lab guest (QEMU TCG threads).") var labCPUs = 2
    @Option(name: .customLong("lab-memory"), help: "Memory of the lab guest, e.g. 2G.") var labMemory = ByteSize(argument: "2G")!
    @Option(help: "The lab kernel: 7.3 (the default; $VMSCOPE_LAB_KERNEL overrides) or 6.12.") var kernel = Lab.Kernel.preferred

    func validate() throws {
        guard (1...8).contains(labCPUs) else { throw ValidationError("--lab-cpus must be 1 to 8") }
        guard labMemory.bytes >= 256 << 20 && labMemory.bytes <= 64 << 30 else {
            throw ValidationError("--lab-memory must be 256M to 64G")
        }
    }

    var machine: LabMachine.Options {
        var o = LabMachine.Options()
        o.cpus = labCPUs
        o.memoryMiB = Int(labMemory.bytes >> 20)
        return o
    }
}

/// Says why the lab cannot start, in one line with the fix, and exits 2.
func requireLab(_ command: String, kernel: Lab.Kernel) throws -> Lab.Artifacts {
    switch Lab.ready(kernel) {
    case .success(let a): return a
    case .failure(let why):
        var err = StandardError()
        print("vmscope \(command): \(why)", to: &err)
        throw ExitCode(2)
    }
}

/// SIGINT and SIGTERM as a set.
private func terminationSignals() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    return set
}

/// Blocks SIGINT and SIGTERM in this thread and so in every thread started after it. Call first thing: a thread
/// started before (Foundation starts some) would take the signal's default action and kill the process before
/// it could stop QEMU and remove its files.
func blockTerminationSignals() {
    var set = terminationSignals()
    pthread_sigmask(SIG_BLOCK, &set, nil)
}

/// Calls `handler` on a thread of its own when SIGINT or SIGTERM arrives (after `blockTerminationSignals`).
func onTerminationSignal(_ handler: @escaping @Sendable (Int32) -> Void) {
    blockTerminationSignals()
    let blocked = terminationSignals()
    let t = Thread {
        var s = blocked
        var received: Int32 = 0
        sigwait(&s, &received)
        handler(received)
    }
    t.start()
}

struct LabRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Boot the lab and run `vmscope vmm --attribute-engine kernel` inside it; serve its control socket here at --socket.")

    @Option(help: "Control socket path on this host (created 0600; root and this uid only).") var socket: String
    @Option(help: "vCPUs of the VM inside the lab.") var vcpus = 2
    @Option(help: "RAM of the VM inside the lab, e.g. 128M.") var ram = ByteSize(argument: "128M")!
    @Option(help: "convert, pause or report.") var faultPolicy = FaultPolicy.convert
    @Option(help: "VM name.") var name = "lab"
    @Flag(help: "Allow conversions, vcpu-control and set-fault-policy.") var allowMutations = false
    @Flag(help: "Allow inject-fault (needs --allow-mutations too).") var allowFaultInjection = false
    @Option(help: "Seconds to wait for the VMM in the lab to serve its socket.") var bootTimeout: Double = 600
    @OptionGroup var machine: LabMachineOptions

    func validate() throws {
        guard !socket.isEmpty else { throw ValidationError("--socket must not be empty") }
        guard (1...16).contains(vcpus) else { throw ValidationError("--vcpus must be 1 to 16 in the lab") }
        if allowFaultInjection && !allowMutations { throw ValidationError("--allow-fault-injection needs --allow-mutations") }
        guard bootTimeout > 0 && bootTimeout <= 86_400 else { throw ValidationError("--boot-timeout must be 0 to 86400 seconds") }
    }

    var vmmArguments: [String] {
        var a = ["--vcpus", String(vcpus), "--ram", "\(ram.bytes)", "--fault-policy", faultPolicy.rawValue, "--name", name]
        if allowMutations { a.append("--allow-mutations") }
        if allowFaultInjection { a.append("--allow-fault-injection") }
        return a
    }

    func run() throws {
        blockTerminationSignals()
        var err = StandardError()
        let artifacts = try requireLab("lab run", kernel: machine.kernel)
        // Refuse a path in use (or a file that is not a socket) before booting anything, by the VMM's own rule;
        // the relay creates the socket again once the VMM inside answers.
        do { try UnixListener(path: socket).remove() } catch {
            print("vmscope lab run: \(error)", to: &err)
            throw ExitCode(2)
        }
        let status = try Self.serve(socket: socket, artifacts: artifacts, vmmArguments: vmmArguments,
                                    options: machine.machine, bootTimeout: bootTimeout, onReady: {
            var e = StandardError()
            print("vmscope lab run: serving \(socket) (the VMM inside the lab runs the kernel engine); Ctrl-C stops", to: &e)
        })
        throw ExitCode(status)
    }

    /// Boots the lab, relays until a signal or the lab ends; returns the exit status. Used by `demo --lab` too.
    static func serve(socket: String, artifacts: Lab.Artifacts, vmmArguments: [String], options: LabMachine.Options,
                      bootTimeout: Double, quiet: Bool = false, onReady: @escaping () -> Void) throws -> Int32 {
        var err = StandardError()
        let job = Lab.runJob(executable: Lab.currentExecutable, vmmArguments: vmmArguments)
        let box = RelayBox()
        // The flag first: the relay may stop, and the caller read it, as soon as it is asked to.
        onTerminationSignal { _ in box.stopRequested = true; box.relay?.requestStop() }
        let m: LabMachine
        do { m = try LabMachine(artifacts: artifacts, job: job, options: options) } catch {
            print("vmscope lab: \(error)", to: &err)
            return 2
        }
        defer { m.shutdown() }
        if !quiet { print("vmscope lab: booting (console: \(m.consoleLog))", to: &err) }
        let link: Int32
        do { link = try m.connectLink() } catch {
            print("vmscope lab: \(error)", to: &err)
            return 1
        }
        let relay = LabRelay(link: link, socketPath: socket)
        box.relay = relay
        if box.stopRequested { return 0 }
        let console = LabMachine.ConsoleReader(path: m.consoleLog)
        let started = Date()
        var lastLines: [String] = []
        relay.log = { line in if !quiet { var e = StandardError(); print("vmscope lab: \(line)", to: &e) } }
        relay.onReady = onReady
        relay.onTick = {
            console.poll { line in
                lastLines = Array((lastLines + [line]).suffix(20))
                if !quiet { var e = StandardError(); print("lab| \(line)", to: &e) }
            }
            if let s = m.process.poll() { relay.stop("QEMU exited (status \(s))") }
            else if !relay.ready && Date().timeIntervalSince(started) > bootTimeout {
                relay.stop("the VMM in the lab did not serve its socket within \(Int(bootTimeout)) s")
            }
        }
        let reason = relay.run()
        let bySignal = box.stopRequested
        if !bySignal {
            print("vmscope lab: stopped: \(reason)", to: &err)
            if quiet { for l in lastLines { print("lab| \(l)", to: &err) } }
        }
        return bySignal ? 0 : 1
    }
}

/// Carries the relay to the signal thread.
final class RelayBox: @unchecked Sendable {
    // @unchecked: `relay` is set once before any signal matters; `stopRequested` is a flag read after the loop.
    var relay: LabRelay?
    var stopRequested = false
}

struct LabExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Boot the lab, run one command inside it (same paths as here, read-only; scratch space in /run), print its output, power off.",
        discussion: "Example: vmscope lab exec -- $(command -v vmscope) caps --json")

    @Option(help: "Seconds before the lab is stopped.") var timeout: Double = 1800
    @Option(name: .customLong("env"), help: "NAME=VALUE to set for the command (repeatable).") var environment: [String] = []
    @OptionGroup var machine: LabMachineOptions
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments.") var command: [String]

    func validate() throws {
        guard !command.isEmpty else { throw ValidationError("name a command to run in the lab") }
        for e in environment where !e.contains("=") { throw ValidationError("--env takes NAME=VALUE, not \(e)") }
        guard timeout > 0 && timeout <= 86_400 else { throw ValidationError("--timeout must be 0 to 86400 seconds") }
    }

    func run() throws {
        blockTerminationSignals()
        var err = StandardError()
        let artifacts = try requireLab("lab exec", kernel: machine.kernel)
        var cmd = command
        if cmd.first == "--" { cmd.removeFirst() }
        var env: [String: String] = [:]
        for e in environment {
            let parts = e.split(separator: "=", maxSplits: 1)
            env[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        let job = Lab.execJob(directory: FileManager.default.currentDirectoryPath, command: cmd, environment: env)
        let m = try LabMachine(artifacts: artifacts, job: job, options: machine.machine)
        onTerminationSignal { _ in m.process.signal(SIGTERM) }
        defer { m.shutdown() }
        let console = LabMachine.ConsoleReader(path: m.consoleLog)
        let started = Date()
        var inOutput = false
        var exitStatus: Int32?
        var last: [String] = []
        func drain() {
            console.poll { line in
                if line.hasPrefix("VMSCOPE-LAB: output begins") { inOutput = true; return }
                if line.hasPrefix("VMSCOPE-LAB: output ends") { inOutput = false; return }
                if line.hasPrefix("VMSCOPE-LAB: exit ") { exitStatus = Int32(line.dropFirst(18)) ; return }
                if inOutput { FileHandle.standardOutput.write(Data((line + "\n").utf8)) } else { last = Array((last + [line]).suffix(20)) }
            }
        }
        var endedAt: Date?
        while m.process.poll() == nil {
            drain()
            // The guest reboots (QEMU exits) right after the exit line; if it hangs instead, don't wait for it.
            if exitStatus != nil {
                if let e = endedAt { if Date().timeIntervalSince(e) > 10 { break } } else { endedAt = Date() }
            }
            if Date().timeIntervalSince(started) > timeout {
                print("vmscope lab exec: timed out after \(Int(timeout)) s", to: &err)
                throw ExitCode(124)
            }
            usleep(100_000)
        }
        drain()
        guard let exitStatus else {
            print("vmscope lab exec: the lab ended without the command's exit status; its last console lines:", to: &err)
            for l in last { print("lab| \(l)", to: &err) }
            throw ExitCode(125)
        }
        throw ExitCode(exitStatus)
    }
}

struct LabAgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Inside the lab only: carry the host's control-socket clients to the VMM.",
        shouldDisplay: false)

    @Option var port: String
    @Option var socket: String
    @Option(name: .customLong("vmm-pid")) var vmmPID: Int32?

    func run() throws {
        let agent = LabAgent(portName: port, vmmSocket: socket, vmmPID: vmmPID)
        let status = agent.run { line in
            var e = StandardError()
            print("vmscope lab agent: \(line)", to: &e)
        }
        throw ExitCode(status)
    }
}

extension Lab.Kernel: ExpressibleByArgument {}
