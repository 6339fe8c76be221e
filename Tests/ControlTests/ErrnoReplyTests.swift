@testable import Schema
import ControlProtocol
import Foundation
import KVM
import Testing
@testable import ControlServer
import VMM

/// Issue 30: one typed errno from a failed ioctl up to a client's error reply, where it reaches the client by name.
struct ErrnoReplyTests {
    @Test func aFailedIoctlsErrnoReachesTheErrorReplyByName() throws {
        let failed = KVMError(operation: "KVM_SET_MEMORY_ATTRIBUTES", errno: .invalidArgument, context: "gpa 0x1000")
        #expect(failed.errnoName == "EINVAL" && failed.description.hasSuffix("failed: EINVAL (Invalid argument)"))
        let refused = CommandTable.vmmError(VMMError(.genericError, failed.description, errno: failed.errno))
        #expect(refused.errno == "EINVAL")
        let reply = QMP.error(refused.errorClass, refused.desc, errno: refused.errno, id: .int(3))
        #expect(reply["error"]?["errno"]?.stringValue == "EINVAL", "\(reply.serialized)")
        #expect(reply["error"]?["class"]?.stringValue == "GenericError" && reply["id"] == .int(3))
        // Any QMP client still reads it as QMP's error (class and desc).
        guard case .error(let c, let desc, _) = QMP.Message(reply) else { Issue.record("not an error: \(reply.serialized)"); return }
        #expect(c == "GenericError" && desc.contains("KVM_SET_MEMORY_ATTRIBUTES"))
    }

    @Test func aRefusalOfTheVMMsOwnCarriesNoErrno() {
        let refused = CommandTable.vmmError(VMMError(.invalidRange, "gpa 0x1001 is not page-aligned"))
        #expect(refused.errno == nil)
        #expect(QMP.error(refused.errorClass, refused.desc, errno: refused.errno, id: nil)["error"]?["errno"] == nil)
    }

    @Test func aSocketErrorKeepsItsErrno() {
        #expect(throws: SocketError.self) { try LineConnection(path: "/nonexistent-dir-vmscope/x.sock") }
        do { _ = try LineConnection(path: "/nonexistent-dir-vmscope/x.sock") } catch {
            #expect(error.errno == .noSuchFileOrDirectory, "\(error)")
        }
    }
}
