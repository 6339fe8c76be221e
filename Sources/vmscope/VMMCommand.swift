import CKVM
import ArgumentParser
import Inspector
import ControlProtocol
import ControlServer
import Exporter
import Foundation
import KVM
import Logging
import VMM
#if canImport(Glibc)
import Glibc
#endif

extension AttributeEngineRequest: ExpressibleByArgument {}
extension FaultPolicy: ExpressibleByArgument {}
extension GuestRequestChannel: ExpressibleByArgument {}

/// A byte size with an optional K/M/G/T suffix (binary units).
struct ByteSize: ExpressibleByArgument {
    var bytes: UInt64
    init?(argument: String) {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var text = argument.uppercased()
        if text.hasSuffix("IB") { text.removeLast(2) } else if text.hasSuffix("B") { text.removeLast() }
        var factor: UInt64 = 1
        if let last = text.last, let f = units[last] { factor = f; text.removeLast() }
        guard let n = UInt64(text) else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: factor)
        guard !overflow, v > 0 else { return nil }
        bytes = v
    }

    /// `--help`'s default as users type it (it printed `ByteSize(bytes: 268435456)`): `256M`, `1T`, `4097B`.
    var defaultValueDescription: String { Fmt.exactSize(bytes) }
}

/// `vmscope vmm`: the reference VMM on real KVM.
struct VMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmm",
        abstract: "Run the reference VMM: the built-in guest on real /dev/kvm, private memory in guest_memfd.")

    @Option(help: "Control socket path (created 0600; QMP framing, see docs/control-protocol.md).")
    var socket: String

    @Option(help: "VM name.") var name = "vmscope"
    @Option(help: "Number of vCPUs.") var vcpus = 2
    @Option(help: "Guest RAM, e.g. 256M, 1T.") var ram = ByteSize(argument: "256M")!
    @Option(name: .customLong("attribute-engine"), help: "auto, kernel or vmm.") var engine = AttributeEngineRequest.auto
    @Option(help: "GPA bit of the shared alias (vmm engine).") var sharedAliasBit: Int?
    @Option(help: "convert, pause or report.") var faultPolicy = FaultPolicy.convert
    @Option(help: "How the built-in guest asks for conversions: auto, doorbell (an I/O port) or hypercall (KVM_HC_MAP_GPA_RANGE; auto picks it where KVM forwards it on a hardware KVM).")
    var guestRequests = GuestRequestChannel.auto
    @Flag(help: "Allow conversions, vcpu-control and set-fault-policy.") var allowMutations = false
    @Flag(help: "Allow inject-fault (needs --allow-mutations too).") var allowFaultInjection = false
    @Flag(help: "Answer queries only: refuse read-memory (guest memory contents) as well as every mutation.")
    var readOnly = false
    @Option(help: "Use at most this many memslots.") var memslotLimit: Int?
    @Option(help: "No memslot crosses a multiple of this size (4K-aligned), e.g. 1G.")
    var memslotSpan = ByteSize(argument: "1G")!
    @Option(help: "KVM device.") var device = KVMSystem.defaultPath
    @Option(help: ArgumentHelp("Serve this VMM's Prometheus metrics at http://ADDR:PORT/metrics (:PORT is loopback).",
                               valueName: "ADDR:PORT"))
    var metrics: String?

    func validate() throws {
        guard (1...1024).contains(vcpus) else { throw ValidationError("--vcpus must be 1 to 1024") }
        guard ram.bytes >= 2 << 20 && ram.bytes <= 1 << 46 && ram.bytes % 4096 == 0 else {
            throw ValidationError("--ram must be a multiple of 4K from 2M to 64T")
        }
        if let bit = sharedAliasBit, !(12...51).contains(bit) || UInt64(1) << UInt64(bit) < ram.bytes {
            throw ValidationError("--shared-alias-bit must be 12 to 51 and at or above the top of RAM (\(64 - (ram.bytes - 1).leadingZeroBitCount) or more for this --ram)")
        }
        guard memslotSpan.bytes >= 4096 && memslotSpan.bytes % 4096 == 0 else {
            throw ValidationError("--memslot-span must be a non-zero multiple of 4K")
        }
        guard !socket.isEmpty else { throw ValidationError("--socket must not be empty") }
        if readOnly && (allowMutations || allowFaultInjection) {
            throw ValidationError("--read-only refuses what --allow-mutations and --allow-fault-injection allow: give one or the other")
        }
        if allowFaultInjection && !allowMutations {
            throw ValidationError("--allow-fault-injection needs --allow-mutations")
        }
        if let metrics {
            do { _ = try parseListenAddress(metrics) } catch { throw ValidationError("--metrics \(error)") }
        }
    }

    @Option(help: .hidden) var exitWithParent: Int32?

    func run() throws {
        // Buffers of 1 MiB and more (a client's unread output, a large reply) are mapped for themselves and go back
        // to the system when freed. glibc's moving threshold rose past them once one was freed, so the next came
        // from a heap that kept them: 4 MiB stayed after the clients that made them went
        // (`HostileClientTests.aBurstOfSlowCommandsDoesNotStarveAnotherClientAndLosesNothing`).
        _ = mallopt(M_MMAP_THRESHOLD, 1 << 20)
        // Started by `vmscope demo`: SIGTERM (a clean stop, socket removed) when the demo's process goes, however
        // it went; a parent already gone by now is the same.
        if let parent = exitWithParent {
            _ = ckvm_parent_death_signal(SIGTERM)
            if getppid() != parent { kill(getpid(), SIGTERM) }
        }
        // A log reader that went away (`vmscope vmm ... 2>&1 | head`, a dead collector) must not kill the VMM and
        // its guest: writes to it fail with EPIPE instead, and logging goes on where it can.
        signal(SIGPIPE, SIG_IGN)
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        let logger = Logger(label: "vmscope.vmm")
        if access(device, R_OK | W_OK) != 0 {
            DeviceUnavailable(KVMError(operation: "open", errno: Errno(rawValue: errno)), path: device).exit()
        }
        var c = VMMConfiguration()
        c.name = name
        c.vcpus = vcpus
        c.ramSize = ram.bytes
        c.engine = engine
        c.sharedAliasBit = sharedAliasBit
        c.faultPolicy = faultPolicy
        c.guest.requests = guestRequests
        c.allowMutations = allowMutations
        c.allowFaultInjection = allowFaultInjection
        c.allowMemoryReads = !readOnly
        c.memslotLimit = memslotLimit
        c.memslotSpan = memslotSpan.bytes
        c.devicePath = device

        // Block SIGINT/SIGTERM before any vCPU thread exists (threads inherit the mask), then wait for them here.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let listener: UnixListener
        do { listener = try UnixListener(path: socket) } catch {
            var err = StandardError()
            print("vmscope vmm: \(error)", to: &err)
            throw ExitCode(2)
        }
        if listener.staleReplaced {
            logger.notice("replaced a stale socket nobody listened on (a VMM killed before it could remove it)",
                          metadata: ["socket": "\(socket)"])
        }
        let vmm: ReferenceVMM
        do { vmm = try ReferenceVMM(c, logger: logger) } catch {
            listener.remove()
            var err = StandardError()
            print("vmscope vmm: \(error.errorClass.rawValue): \(error.description)", to: &err)
            throw ExitCode(2)
        }
        let server = ControlServer(vmm: vmm, listener: listener, logger: Logger(label: "vmscope.control"))
        server.start()
        vmm.start()
        var exporter: MetricsEndpoint?
        if let metrics {
            let pid = getpid(), name = name
            do {
                exporter = try MetricsEndpoint(address: metrics, interval: 1, logger: Logger(label: "vmscope.metrics")) { store in
                    [.vmm(pid: pid, name: name, metrics: vmm.metrics(conversionTimesAfter: store.conversionTimesSeen(pid: pid)))]
                }
                logger.info("serving Prometheus metrics", metadata: ["url": "\(exporter!.url)"])
            } catch {
                server.stop(); vmm.stop(); listener.remove()
                var err = StandardError()
                print("vmscope vmm: \(error)", to: &err)
                throw ExitCode(2)
            }
        }
        logger.info("running; SIGINT or SIGTERM stops", metadata: ["socket": "\(socket)"])

        var received: Int32 = 0
        sigwait(&set, &received)
        logger.info("stopping", metadata: ["signal": "\(received == SIGINT ? "SIGINT" : "SIGTERM")"])
        exporter?.stop()
        server.stop()
        vmm.stop()
        listener.remove()
        logger.info("stopped; socket removed")
    }
}
