import ControlProtocol
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The guest half of the lab's control link (`vmscope lab agent`, started by the lab's job script inside the lab
/// guest): opens the virtio-serial port, waits for the VMM's socket, then connects one VMM client per channel the
/// host opens. It ends, saying why, when the VMM process ends or the link breaks.
public struct LabAgent: Sendable {
    public var portName: String
    public var vmmSocket: String
    public var vmmPID: pid_t?
    /// How long the VMM may take to start serving (TCG is slow: a cold Swift start takes seconds there).
    public var startTimeout: Double = 300

    public init(portName: String, vmmSocket: String, vmmPID: pid_t?) {
        self.portName = portName
        self.vmmSocket = vmmSocket
        self.vmmPID = vmmPID
    }

    /// Carries the host's channels over `link` to the VMM's socket until the VMM exits or the link fails; returns
    /// why it stopped (after saying so to the host).
    public func serve(link: Int32) -> String {
        let pump = MuxPump(link: link)
        pump.messageAware = true
        pump.onFrame = { m in
            switch m.type {
            case .open:
                if pump.streams.count >= pump.maxChannels {
                    pump.send(.close, channel: m.channel)
                } else if let fd = connectVMM() {
                    pump.add(channel: m.channel, fd: fd, label: "channel \(m.channel)")
                } else {
                    pump.send(.close, channel: m.channel)
                }
            default:
                break
            }
        }
        // The VMM closed a client's connection: the host closes that client.
        pump.onStreamEnded = { ch in pump.drop(channel: ch, tellPeer: true) }
        pump.onTick = {
            if !vmmAlive() { pump.stop("the VMM exited") }
        }
        pump.send(.hello, channel: 0, Array("vmscope lab agent: VMM serving \(vmmSocket)".utf8))
        pump.run()
        let reason = pump.stopReason ?? "stopped"
        pump.send(.bye, channel: 0, Array(reason.utf8))
        pump.drainLink(ms: 2000)
        return reason
    }

    /// The `/dev` node of the virtio-serial port named `name` (no udev in the lab: read sysfs).
    public static func portDevice(named name: String, sysfs: String = "/sys/class/virtio-ports") -> String? {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: sysfs) else { return nil }
        for e in entries.sorted() {
            let text = (try? String(contentsOfFile: "\(sysfs)/\(e)/name", encoding: .utf8)) ?? ""
            if text.trimmingCharacters(in: .whitespacesAndNewlines) == name { return "/dev/\(e)" }
        }
        return nil
    }

    private func vmmAlive() -> Bool {
        guard let vmmPID else { return true }
        var status: Int32 = 0
        let r = waitpid(vmmPID, &status, WNOHANG)
        return r == 0 || (r < 0 && kill(vmmPID, 0) == 0)
    }

    private func connectVMM() -> Int32? {
        try? connectUnixSocket(path: vmmSocket)
    }

    /// Runs the agent; returns the process exit status.
    public func run(log: (String) -> Void) -> Int32 {
        guard let device = Self.portDevice(named: portName) else {
            log("no virtio-serial port named \(portName) (is CONFIG_VIRTIO_CONSOLE in the lab kernel?)")
            return 2
        }
        let link = open(device, O_RDWR | O_CLOEXEC)
        guard link >= 0 else {
            log("open \(device): \(String(cString: strerror(errno)))")
            return 2
        }
        // Wait until the VMM serves its socket (or dies).
        let deadline = Date().addingTimeInterval(startTimeout)
        while true {
            if let fd = connectVMM() { close(fd); break }
            if !vmmAlive() { log("the VMM exited before it served \(vmmSocket)"); return 3 }
            if Date() > deadline { log("the VMM did not serve \(vmmSocket) within \(Int(startTimeout)) s"); return 3 }
            usleep(100_000)
        }
        // The relay is what every client waits on; the lab's two CPUs are otherwise taken by the VMM's vCPU threads
        // (an emulated nested guest runs flat out), and at equal priority each of its wake-ups waited behind them.
        if setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, -10) != 0 {
            log("could not raise the agent's priority: \(String(cString: strerror(errno)))")
        }
        log("link up on \(device); VMM serving \(vmmSocket)")
        let reason = serve(link: link)
        log("agent stopping: \(reason)")
        return reason == "the VMM exited" ? 0 : 1
    }
}
