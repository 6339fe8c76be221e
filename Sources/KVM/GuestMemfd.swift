/// Flags for `KVM_CREATE_GUEST_MEMFD`.
public struct GuestMemfdFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `GUEST_MEMFD_FLAG_MMAP`: the VMM may `mmap` the file.
    public static let mmap = GuestMemfdFlags(rawValue: 1 << 0)
    /// `GUEST_MEMFD_FLAG_INIT_SHARED`: pages start shared, so host and guest both reach them.
    public static let initShared = GuestMemfdFlags(rawValue: 1 << 1)

    public var names: [String] {
        var out: [String] = []
        if contains(.mmap) { out.append("MMAP") }
        if contains(.initShared) { out.append("INIT_SHARED") }
        let unknown = rawValue & ~(GuestMemfdFlags.mmap.rawValue | GuestMemfdFlags.initShared.rawValue)
        for bit in 0..<64 where unknown & (1 << UInt64(bit)) != 0 { out.append("bit \(bit)") }
        return out
    }
}

/// A `guest_memfd`: the file that holds a VM's private memory.
///
/// It belongs to the VM that created it; a memslot binds a range of it with `KVM_MEM_GUEST_MEMFD`.
public final class GuestMemfd: Sendable {
    public let fd: OwnedFileDescriptor
    public let size: UInt64
    public let flags: GuestMemfdFlags

    init(fd: OwnedFileDescriptor, size: UInt64, flags: GuestMemfdFlags) {
        self.fd = fd
        self.size = size
        self.flags = flags
    }

    /// Maps the file into the VMM (needs `.mmap`).
    public func map(offset: UInt64 = 0, size: Int? = nil) throws(KVMError) -> HostMapping {
        try HostMapping.shared(fd: fd.rawValue, offset: offset, size: size ?? Int(self.size))
    }

    /// Discards `[offset, offset+length)`: a later private read sees zeros.
    ///
    /// The corresponding C function is `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`.
    public func punchHole(offset: UInt64, length: UInt64) throws(KVMError) {
        try punch(fd: fd, offset: offset, length: length)
    }
}
