import CKVM

/// Flags of a memslot (`kvm_userspace_memory_region2.flags`).
public struct MemoryRegionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let logDirtyPages = MemoryRegionFlags(rawValue: 1 << 0)
    public static let readonly = MemoryRegionFlags(rawValue: 1 << 1)
    public static let guestMemfd = MemoryRegionFlags(rawValue: 1 << 2)

    /// Every set bit by name (`LOG_DIRTY_PAGES`, `READONLY`, `GUEST_MEMFD`), unknown ones as `bit N`.
    public var names: [String] {
        var out: [String] = []
        for bit in 0..<32 where rawValue & (1 << UInt32(bit)) != 0 {
            switch bit {
            case 0: out.append("LOG_DIRTY_PAGES")
            case 1: out.append("READONLY")
            case 2: out.append("GUEST_MEMFD")
            default: out.append("bit \(bit)")
            }
        }
        return out
    }
}

/// One memslot as `KVM_SET_USER_MEMORY_REGION2` takes it.
public struct MemoryRegion: Sendable, Hashable {
    /// Slot number within its address space (low 16 bits of `slot`).
    public var slot: UInt16
    /// Address-space id (high 16 bits of `slot`; 1 is SMM on x86).
    public var addressSpace: UInt16
    public var flags: MemoryRegionFlags
    public var guestPhysicalAddress: UInt64
    /// Bytes; 0 deletes the slot.
    public var size: UInt64
    public var userspaceAddress: UInt64
    /// The guest_memfd file descriptor bound with `.guestMemfd`, else nil.
    public var guestMemfd: Int32?
    public var guestMemfdOffset: UInt64

    public init(slot: UInt16, addressSpace: UInt16 = 0, flags: MemoryRegionFlags = [], guestPhysicalAddress: UInt64,
                size: UInt64, userspaceAddress: UInt64, guestMemfd: Int32? = nil, guestMemfdOffset: UInt64 = 0) {
        self.slot = slot
        self.addressSpace = addressSpace
        self.flags = flags
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userspaceAddress = userspaceAddress
        self.guestMemfd = guestMemfd
        self.guestMemfdOffset = guestMemfdOffset
    }

    var uapi: ckvm_userspace_memory_region2 {
        var r = ckvm_userspace_memory_region2()
        r.slot = UInt32(addressSpace) << 16 | UInt32(slot)
        r.flags = flags.rawValue
        r.guest_phys_addr = guestPhysicalAddress
        r.memory_size = size
        r.userspace_addr = userspaceAddress
        r.guest_memfd_offset = guestMemfdOffset
        r.guest_memfd = UInt32(bitPattern: guestMemfd ?? 0)
        return r
    }

    var summary: String {
        "slot \(slot) as \(addressSpace) gpa 0x\(String(guestPhysicalAddress, radix: 16)) size 0x\(String(size, radix: 16))"
            + (guestMemfd.map { " guest_memfd \($0)+0x\(String(guestMemfdOffset, radix: 16))" } ?? "")
    }
}

/// Attribute bits of `KVM_SET_MEMORY_ATTRIBUTES`.
public struct MemoryAttributes: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
    public static let `private` = MemoryAttributes(rawValue: 1 << 3)
}
