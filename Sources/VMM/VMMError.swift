import Schema
import KVM

/// A refused or failed VMM operation, classed as the control protocol's error classes.
public struct VMMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The protocol's error classes (the VMM's own refusals use all but CommandNotFound).
    public typealias Class = QMP.ErrorClass

    public var errorClass: Class
    public var description: String
    /// The errno of the system call that failed, where one is the cause: it reaches the client's error reply by name.
    public var errno: Errno?

    public init(_ errorClass: Class, _ description: String, errno: Errno? = nil) {
        self.errorClass = errorClass
        self.description = description
        self.errno = errno
    }

    static func kvm(_ e: KVMError) -> VMMError { VMMError(.genericError, e.description, errno: e.errno) }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
