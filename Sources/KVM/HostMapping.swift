import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// A range of the VMM's address space that backs guest memory: an `mmap` this object owns and unmaps.
///
/// Mappings are `MAP_NORESERVE`, so a 1 TiB VM costs only the pages the guest or host touch.
public final class HostMapping: @unchecked Sendable {
    // Sendable: the pointer and size never change; the bytes behind it are guest memory, shared with the
    // guest by design, and accessed with the same care a VMM takes with any guest page.
    public let base: UnsafeMutableRawPointer
    public let size: Int

    private init(base: UnsafeMutableRawPointer, size: Int) {
        self.base = base
        self.size = size
    }

    deinit { munmap(base, size) }

    /// Private anonymous memory.
    public static func anonymous(size: Int) throws(KVMError) -> HostMapping {
        try map(size: size, flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, fd: -1, offset: 0, what: "anonymous")
    }

    /// A shared mapping of `size` bytes of `fd` from `offset` (a memfd or a guest_memfd).
    public static func shared(fd: Int32, offset: UInt64 = 0, size: Int) throws(KVMError) -> HostMapping {
        try map(size: size, flags: MAP_SHARED | MAP_NORESERVE, fd: fd, offset: offset, what: "fd \(fd)")
    }

    private static func map(size: Int, flags: Int32, fd: Int32, offset: UInt64, what: String) throws(KVMError) -> HostMapping {
        guard size > 0 else { throw KVMError(operation: "mmap", errno: .invalidArgument, context: "size 0") }
        let pointer = mmap(nil, size, PROT_READ | PROT_WRITE, flags, fd, off_t(Int64(bitPattern: offset)))
        guard let pointer, pointer != MAP_FAILED else {
            throw KVMError.last("mmap", "\(what), \(size) bytes at offset \(offset)")
        }
        return HostMapping(base: pointer, size: size)
    }

    /// The mapping's address as KVM's `userspace_addr` wants it.
    public var address: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// Copies `bytes` to `offset`.
    public func write(_ bytes: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + bytes.count <= size, "write outside the mapping")
        bytes.withUnsafeBytes { base.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// Copies `count` bytes from `offset`.
    public func read(at offset: Int, count: Int) -> [UInt8] {
        precondition(offset >= 0 && count >= 0 && offset + count <= size, "read outside the mapping")
        return [UInt8](UnsafeRawBufferPointer(start: base.advanced(by: offset), count: count))
    }

    /// A little-endian 32-bit load, for checking what a guest stored.
    public func load32(at offset: Int) -> UInt32 {
        precondition(offset >= 0 && offset + 4 <= size)
        return UInt32(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    /// A little-endian 32-bit store.
    public func store32(_ value: UInt32, at offset: Int) {
        precondition(offset >= 0 && offset + 4 <= size)
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self)
    }
}

/// A memfd: anonymous shared memory with a file descriptor, for the shared half of guest RAM.
public final class MemoryFile: Sendable {
    public let fd: OwnedFileDescriptor
    public let size: UInt64

    /// `memfd_create(name, MFD_CLOEXEC)` then `ftruncate` to `size` (sparse: nothing is allocated yet).
    public init(name: String, size: UInt64) throws(KVMError) {
        let raw = ckvm_memfd_create(name, CKVM_MFD_CLOEXEC)
        if raw < 0 { throw KVMError.last("memfd_create", name) }
        let owned = OwnedFileDescriptor(adopting: raw)
        if ftruncate(raw, off_t(size)) != 0 { throw KVMError.last("ftruncate", "memfd \(name) to \(size)") }
        self.fd = owned
        self.size = size
    }

    /// Frees the backing of `[offset, offset+length)`; later reads see zeros.
    ///
    /// The corresponding C function is `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`.
    public func punchHole(offset: UInt64, length: UInt64) throws(KVMError) {
        try punch(fd: fd, offset: offset, length: length)
    }
}

func punch(fd: OwnedFileDescriptor, offset: UInt64, length: UInt64) throws(KVMError) {
    let mode = Int32(CKVM_FALLOC_FL_PUNCH_HOLE | CKVM_FALLOC_FL_KEEP_SIZE)
    if ckvm_fallocate(fd.rawValue, mode, Int64(bitPattern: offset), Int64(bitPattern: length)) != 0 {
        throw KVMError.last("fallocate(PUNCH_HOLE)", "offset 0x\(String(offset, radix: 16)) length 0x\(String(length, radix: 16))")
    }
}
