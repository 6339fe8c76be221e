import ArgumentParser
import ControlProtocol
import Foundation
import Inspector
import Libvirt

/// How a snapshot is written.
enum SnapshotFormat: String, EnumerableFlag {
    case json, text
    static func help(for value: SnapshotFormat) -> ArgumentHelp? {
        switch value {
        case .json: "JSON (the default; schema in docs/snapshot.schema.json)."
        case .text: "The four views as the inspector draws them, as plain text for a ticket."
        }
    }
}

/// `vmscope snapshot SOCKET`: every view at one instant, without a terminal.
struct SnapshotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Print one consistent capture of every view (VM, memslots, attribute runs, recent faults, vCPUs).",
        discussion: """
            On vmscope's VMM the memslots, attribute runs and fault records come from one query-snapshot, taken \
            under the lock conversions and faults take. On a stock QEMU it holds what QEMU offers (see attach). \
            Exit status 0, or 2 when the socket cannot be used or the capture fails.
            """)

    @Argument(help: "The control socket, or libvirt:DOMAIN (a libvirt-managed QEMU, by name or UUID).") var socket: String
    @Option(name: .customLong("connect"), help: "The libvirt URI for libvirt:DOMAIN.")
    var libvirtURI = LibvirtConnection.defaultURI
    @Flag var format: SnapshotFormat = .json
    @Option(help: "How many of the newest fault records to include.") var faults = 256
    @Option(name: .shortAndLong, help: "Write to this file instead of standard output.") var output: String?
    @Flag(help: "ASCII glyphs in --text.") var ascii = false

    func validate() throws {
        guard (0...1_000_000).contains(faults) else { throw ValidationError("--faults must be 0 to 1000000") }
    }

    func run() throws {
        var err = StandardError()
        let text: String
        do {
            let taken = HostClock.wallNs()
            let model: InspectorModel
            if socket.hasPrefix("libvirt:") {
                let connection = try LibvirtConnection(uri: libvirtURI)
                model = try LibvirtSource(domain: try connection.domain(String(socket.dropFirst("libvirt:".count)))).capture(nowNs: HostClock.monotonicNs())
            } else {
                let client = try ControlClient(path: socket, timeoutMs: 5000)
                defer { client.close() }
                model = try Capture.model(client, faultLimit: faults, nowNs: HostClock.monotonicNs())
            }
            text = switch format {
            case .json: Snapshot.json(model, faultLimit: faults, takenAtWallNs: taken, origin: .live).pretty() + "\n"
            case .text: Snapshot.text(model, ascii: ascii)
            }
        } catch {
            print("vmscope snapshot: \(socket): \(error)", to: &err)
            throw ExitCode(2)
        }
        try writeOutput(text, to: output, command: "snapshot")
    }
}

/// Writes `text` to `path` (whole, via a temporary file renamed into place) or to standard output.
func writeOutput(_ text: String, to path: String?, command: String) throws {
    guard let path else { FileHandle.standardOutput.write(Data(text.utf8)); return }
    do { try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic) } catch {
        var err = StandardError()
        print("vmscope \(command): cannot write \(path): \(error.localizedDescription)", to: &err)
        throw ExitCode(2)
    }
}
