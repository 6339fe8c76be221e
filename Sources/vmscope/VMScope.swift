import ControlProtocol
import ArgumentParser

/// `vmscope`: a terminal inspector for live KVM virtual machines, and the reference VMM it inspects.
@main
struct VMScope: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmscope",
        abstract: "Inspect live KVM virtual machines: memslots, private/shared attributes, memory faults, vCPUs.",
        version: QMP.package,
        subcommands: [AttachCommand.self, DemoCommand.self, VMMCommand.self, CtlCommand.self, CapsCommand.self,
                      SnapshotCommand.self, RecordCommand.self, ReplayCommand.self, LabCommand.self,
                      TraceCommand.self, TopCommand.self])
}
