import CKVM
#if canImport(Glibc)
import Glibc
#endif

/// One statistic described by a KVM binary stats file (`struct kvm_stats_desc`).
public struct StatDescriptor: Sendable, Hashable {
    public enum Kind: UInt32, Sendable {
        case cumulative = 0, instant = 1, peak = 2, linearHistogram = 3, logHistogram = 4
    }
    public enum Unit: UInt32, Sendable {
        case none = 0, bytes = 1, seconds = 2, cycles = 3, boolean = 4
    }

    public let name: String
    /// Raw `flags`: type in bits 3:0, unit in 7:4, base in 11:8.
    public let flags: UInt32
    public let exponent: Int16
    /// Number of u64 values (more than one only for histograms).
    public let count: Int
    /// Offset of the first value in the data block, in bytes.
    public let offset: Int
    public let bucketSize: UInt32

    public var kind: Kind? { Kind(rawValue: flags & 0xF) }
    public var unit: Unit? { Unit(rawValue: (flags >> 4) & 0xF) }
    /// True when `exponent` is a power of 2 rather than of 10.
    public var baseIsPow2: Bool { (flags >> 8) & 0xF == 1 }
}

/// A KVM binary statistics file (`KVM_GET_STATS_FD`): header and descriptors read once, values on demand.
///
/// See "KVM_GET_STATS_FD" in the KVM API documentation. Reads use `pread` only, as the format requires.
public final class BinaryStats: Sendable {
    public let fd: OwnedFileDescriptor
    /// The id string, e.g. `kvm-1234/vcpu-0`.
    public let id: String
    public let descriptors: [StatDescriptor]
    private let dataOffset: Int
    private let dataSize: Int

    init(fd: OwnedFileDescriptor) throws(KVMError) {
        self.fd = fd
        let header: [UInt32] = try Self.pread(fd, count: 6, at: 0)
        let nameSize = Int(header[1]), numDesc = Int(header[2])
        let idOffset = Int(header[3]), descOffset = Int(header[4])
        dataOffset = Int(header[5])
        let idBytes: [UInt8] = try Self.pread(fd, count: nameSize, at: idOffset)
        id = String(decoding: idBytes.prefix { $0 != 0 }, as: UTF8.self)

        let stride = 16 + nameSize
        let raw: [UInt8] = try Self.pread(fd, count: stride * numDesc, at: descOffset)
        var descs: [StatDescriptor] = []
        descs.reserveCapacity(numDesc)
        var end = 0
        raw.withUnsafeBytes { bytes in
            for i in 0..<numDesc {
                let base = i * stride
                let nameBytes = bytes[(base + 16)..<(base + stride)].prefix { $0 != 0 }
                let d = StatDescriptor(
                    name: String(decoding: nameBytes, as: UTF8.self),
                    flags: bytes.loadUnaligned(fromByteOffset: base, as: UInt32.self),
                    exponent: bytes.loadUnaligned(fromByteOffset: base + 4, as: Int16.self),
                    count: Int(bytes.loadUnaligned(fromByteOffset: base + 6, as: UInt16.self)),
                    offset: Int(bytes.loadUnaligned(fromByteOffset: base + 8, as: UInt32.self)),
                    bucketSize: bytes.loadUnaligned(fromByteOffset: base + 12, as: UInt32.self))
                end = max(end, d.offset + d.count * 8)
                descs.append(d)
            }
        }
        descriptors = descs
        dataSize = end
    }

    private static func pread<T>(_ fd: OwnedFileDescriptor, count: Int, at offset: Int) throws(KVMError) -> [T] {
        var out = [T](unsafeUninitializedCapacity: count) { _, n in n = count }
        let want = count * MemoryLayout<T>.stride
        let got = out.withUnsafeMutableBytes { Glibc.pread(fd.rawValue, $0.baseAddress, want, off_t(offset)) }
        if got < 0 { throw KVMError.last("pread stats fd", "\(want) bytes at \(offset)") }
        if got != want { throw KVMError(operation: "pread stats fd", errno: .ioError, context: "short read: \(got) of \(want) bytes") }
        return out
    }

    /// Reads the current values: one array per descriptor (one element unless it is a histogram).
    public func read() throws(KVMError) -> [String: [UInt64]] {
        let words: [UInt64] = try Self.pread(fd, count: dataSize / 8, at: dataOffset)
        var out: [String: [UInt64]] = [:]
        out.reserveCapacity(descriptors.count)
        for d in descriptors {
            let first = d.offset / 8
            out[d.name] = Array(words[first..<(first + d.count)])
        }
        return out
    }

    /// Where statistic `name`'s value stands among the words `readWords` returns, when it is one value.
    public func wordIndex(of name: String) -> Int? {
        descriptors.first { $0.name == name && $0.count == 1 }.map { $0.offset / 8 }
    }

    /// The data block as it is now, every value in descriptor order of offset (one pread, nothing decoded).
    public func readWords() throws(KVMError) -> [UInt64] {
        try Self.pread(fd, count: dataSize / 8, at: dataOffset)
    }

    /// Reads the current values of the non-histogram statistics only.
    public func readScalars() throws(KVMError) -> [String: UInt64] {
        try read().compactMapValues { $0.count == 1 ? $0[0] : nil }
    }
}

extension BinaryStats {
    /// A binary statistics file another process holds open (its `fd`, an `anon_inode:kvm-vcpu-stats:N` or
    /// `kvm-vm-stats`), duplicated with pidfd_getfd: how `vmscope top` reads any VMM's counters without its help.
    /// (KVM refuses ioctls on a VM or vCPU fd from another process, EIO, so a VMM that holds no stats file gives
    /// none this way; KVM's debugfs files may be closed by kernel lockdown.)
    public static func ofProcess(_ process: ProcessHandle, fd: Int32) throws(KVMError) -> BinaryStats {
        let dup = process.duplicate(fd)
        guard dup >= 0 else { throw KVMError.last("pidfd_getfd", "pid \(process.pid) fd \(fd)") }
        return try BinaryStats(fd: OwnedFileDescriptor(adopting: dup))
    }
}
