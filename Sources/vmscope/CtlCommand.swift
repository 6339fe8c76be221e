import ArgumentParser
import ControlProtocol
import Foundation

/// `vmscope ctl`: one command to a control socket (vmscope's VMM or any QMP server), or its event stream.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Run one control-protocol command and print its reply as JSON, or print events.",
        discussion: """
            Exit status: 0 when the command returned, 1 when it was refused (class and text on stderr), 2 when the \
            socket could not be used. Examples:
              vmscope ctl /tmp/vm.sock query-memslots
              vmscope ctl /tmp/vm.sock set-memory-attributes '{"gpa": 2097152, "size": 4096, "private": false}'
              vmscope ctl /tmp/vm.sock --events --count 10
            """)

    @Argument(help: "The control socket.") var socket: String
    @Argument(help: "The command, e.g. query-vm.") var command: String?
    @Argument(help: "The command's arguments as one JSON object.") var arguments: String?
    @Flag(help: "Print events as JSON lines instead of running a command.") var events = false
    @Option(help: "With --events: stop after this many.") var count: Int?
    @Option(help: "Seconds to wait for the reply, or with --events for the next event.") var timeout: Double = 30

    func validate() throws {
        guard timeout.isFinite && timeout > 0 && timeout <= 600 else { throw ValidationError("--timeout must be more than 0 and at most 600 seconds") }
        if events {
            guard command == nil else { throw ValidationError("--events takes no command") }
            if let count, count < 1 { throw ValidationError("--count must be at least 1") }
        } else {
            guard let command, !command.isEmpty else { throw ValidationError("name a command, or give --events") }
            if let arguments { _ = try parsedArguments(arguments) }
        }
        guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
    }

    private func parsedArguments(_ text: String) throws -> JSON {
        let value: JSON
        do { value = try JSON.parse(text) } catch {
            throw ValidationError("the arguments are not JSON: \(error)")
        }
        guard case .object = value else {
            throw ValidationError("the arguments must be one JSON object, e.g. '{\"gpa\": 0, \"size\": 4096}'")
        }
        return value
    }

    func run() throws {
        var err = StandardError()
        let client: ControlClient
        do { client = try ControlClient(path: socket, timeoutMs: Int32(timeout * 1000)) } catch {
            print("vmscope ctl: \(socket): \(error)", to: &err)
            throw ExitCode(2)
        }
        defer { client.close() }
        if events {
            var printed = 0
            while count.map({ printed < $0 }) ?? true {
                guard let e = client.nextEvent(timeoutMs: Int32(timeout * 1000)) else {
                    if client.isConnected { print("vmscope ctl: no event within \(timeout) s", to: &err); throw ExitCode(1) }
                    print("vmscope ctl: \(client.closeReason ?? "\(socket) closed the connection")", to: &err)
                    throw ExitCode(2)
                }
                print(e.serialized)
                fflush(nil)
                printed += 1
            }
            return
        }
        let args = try arguments.map(parsedArguments)
        do {
            let result = try client.execute(command!, args, timeoutMs: Int32(timeout * 1000))
            print(result.serialized)
        } catch {
            switch error {
            case .command(let c, let d):
                print("\(c): \(d)", to: &err)
                throw ExitCode(1)
            default:
                print("vmscope ctl: \(error)", to: &err)
                throw ExitCode(2)
            }
        }
    }
}
