import ControlProtocol
import Foundation
import Logging
import VMM

/// A reference VMM and its control server on a socket, started as `vmscope vmm` starts them; for tests and
/// benchmarks that want a live VM in their own process.
public final class ServedVMM: @unchecked Sendable {
    // @unchecked: constant references to objects that are themselves thread-safe.
    public let vmm: ReferenceVMM
    public let server: ControlServer
    public let listener: UnixListener
    public let path: String

    /// Makes the VMM from `configuration`, listens on `path` (default: a new name in the temporary directory),
    /// then starts the server and the vCPUs.
    public init(_ configuration: VMMConfiguration, path: String? = nil, options: ControlServer.Options = .init(),
                logger: Logger = Logger(label: "vmscope.vmm")) throws {
        vmm = try ReferenceVMM(configuration, logger: logger)
        self.path = path ?? NSTemporaryDirectory() + "vmscope-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        listener = try UnixListener(path: self.path)
        server = ControlServer(vmm: vmm, listener: listener, options: options, logger: logger)
        server.start()
        vmm.start()
    }

    /// Stops the server, then the vCPUs, and removes the socket.
    public func stop() {
        server.stop()
        vmm.stop()
        listener.remove()
    }
}
