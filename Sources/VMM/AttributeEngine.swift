import KVM

/// How private/shared attributes become KVM state: the one interface both engines implement.
///
/// `GuestMemory` keeps the attribute map (KVM has no read-back ioctl, so the VMM's map is the record) and
/// asks the engine what to tell KVM: which memslots a stretch of RAM needs, and what a conversion does
/// beyond re-laying memslots.
public protocol AttributeEngine: AnyObject, Sendable {
    var kind: AttributeEngineKind { get }
    /// The shared-alias mask (vmm engine), or nil.
    var sharedAlias: UInt64? { get }
    /// Called once before the first memslots go in.
    func installInitialAttributes(_ memory: GuestMemory) throws(VMMError)
    /// Tells KVM about a conversion (kernel engine: `KVM_SET_MEMORY_ATTRIBUTES`); vmm engine: nothing.
    func setAttributes(pages: Range<UInt64>, toPrivate: Bool, memory: GuestMemory) throws(VMMError)
    /// The memslots the engine wants for RAM pages `window`, in order.
    func segments(window: Range<UInt64>, attributes: AttributeMap, revoked: AttributeMap) -> [Segment]
    /// The memslot for one segment.
    func region(for segment: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion
    func view(of segment: Segment) -> MemslotInfo.View
    /// Which RAM page and view `gpa` names, or nil when it is not RAM.
    func classify(_ gpa: UInt64, ramSize: UInt64) -> GPAClassification?
}

/// Pieces of `window` on which both maps are constant: (start, end, private, revoked).
func pieces(window: Range<UInt64>, attributes: AttributeMap, revoked: AttributeMap)
    -> [(start: UInt64, end: UInt64, isPrivate: Bool, revoked: Bool)]
{
    let page = AttributeMap.pageSize
    let a = attributes.runs(pages: window)
    let r = revoked.runs(pages: window)
    var out: [(UInt64, UInt64, Bool, Bool)] = []
    var i = 0, j = 0
    var pos = window.lowerBound
    while pos < window.upperBound && i < a.count && j < r.count {
        let aEnd = a[i].end / page, rEnd = r[j].end / page
        let end = min(aEnd, rEnd)
        out.append((pos, end, a[i].isPrivate, r[j].isPrivate))
        pos = end
        if aEnd == end { i += 1 }
        if rEnd == end { j += 1 }
    }
    return out
}

/// The vmm-enforced engine: the private view at the RAM's own GPAs (guest_memfd), the shared view at
/// `gpa | sharedAlias` (memfd), one memslot per maximal run in the view it belongs to. A guest access to the
/// other view finds no memslot and exits as `KVM_EXIT_MMIO`: that exit is the fault source.
public final class VMMEnforcedEngine: AttributeEngine {
    public let kind = AttributeEngineKind.vmm
    public let alias: UInt64
    public var sharedAlias: UInt64? { alias }

    public init(sharedAliasBit: Int) {
        alias = 1 << UInt64(sharedAliasBit)
    }

    public func installInitialAttributes(_ memory: GuestMemory) throws(VMMError) {}
    public func setAttributes(pages: Range<UInt64>, toPrivate: Bool, memory: GuestMemory) throws(VMMError) {}

    public func segments(window: Range<UInt64>, attributes: AttributeMap, revoked: AttributeMap) -> [Segment] {
        var out: [Segment] = []
        for p in pieces(window: window, attributes: attributes, revoked: revoked) where !p.revoked {
            if let last = out.last, last.end == p.start, last.isPrivate == p.isPrivate {
                out[out.count - 1].end = p.end
            } else {
                out.append(Segment(start: p.start, end: p.end, isPrivate: p.isPrivate))
            }
        }
        return out
    }

    public func region(for s: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion {
        let offset = s.start * AttributeMap.pageSize
        let size = (s.end - s.start) * AttributeMap.pageSize
        if s.isPrivate {
            let b = memory.privateBacking
            if b.kind == .guestMemfd {
                return MemoryRegion(slot: slot, flags: .guestMemfd, guestPhysicalAddress: offset, size: size,
                                    userspaceAddress: b.mapping.address + offset, guestMemfd: b.fd.rawValue,
                                    guestMemfdOffset: offset)
            }
            return MemoryRegion(slot: slot, guestPhysicalAddress: offset, size: size,
                                userspaceAddress: b.mapping.address + offset)
        }
        return MemoryRegion(slot: slot, guestPhysicalAddress: offset | alias, size: size,
                            userspaceAddress: memory.sharedBacking.mapping.address + offset)
    }

    public func view(of s: Segment) -> MemslotInfo.View { s.isPrivate ? .private : .shared }

    public func classify(_ gpa: UInt64, ramSize: UInt64) -> GPAClassification? {
        let shared = gpa & alias != 0
        let offset = gpa & ~alias
        guard offset < ramSize else { return nil }
        return GPAClassification(ramOffset: offset, privateView: !shared)
    }
}

/// The kernel engine: every RAM memslot carries both backings (`KVM_MEM_GUEST_MEMFD` for private,
/// `userspace_addr` for shared), conversions are `KVM_SET_MEMORY_ATTRIBUTES`, and faults are the kernel's own
/// `KVM_EXIT_MEMORY_FAULT`. Needs a VM type that reports `KVM_MEMORY_ATTRIBUTE_PRIVATE`; it cannot run on
/// this project's machines (see `vmscope caps`).
public final class KernelEngine: AttributeEngine {
    public let kind = AttributeEngineKind.kernel
    public var sharedAlias: UInt64? { nil }

    public init() {}

    public func installInitialAttributes(_ memory: GuestMemory) throws(VMMError) {
        // RAM starts private, as the map says.
        try setAttributes(pages: 0..<memory.pageCount, toPrivate: true, memory: memory)
    }

    public func setAttributes(pages: Range<UInt64>, toPrivate: Bool, memory: GuestMemory) throws(VMMError) {
        do {
            try memory.vm.setMemoryAttributes(address: pages.lowerBound * AttributeMap.pageSize,
                                              size: UInt64(pages.count) * AttributeMap.pageSize,
                                              attributes: toPrivate ? .private : [])
        } catch {
            throw VMMError(error.errno == 22 || error.errno == 25 ? .unsupported : .genericError, error.description)
        }
    }

    public func segments(window: Range<UInt64>, attributes: AttributeMap, revoked: AttributeMap) -> [Segment] {
        var out: [Segment] = []
        // Memslots of at most 2^31 - 1 pages (KVM_MEM_MAX_NR_PAGES); 1 GiB pieces keep them well inside it.
        let maxPages: UInt64 = 1 << 18
        for run in revoked.runs(pages: window) where !run.isPrivate {
            var start = run.gpa / AttributeMap.pageSize
            let end = run.end / AttributeMap.pageSize
            while start < end {
                let stop = min(end, (start / maxPages + 1) * maxPages)
                out.append(Segment(start: start, end: stop, isPrivate: true))
                start = stop
            }
        }
        return out
    }

    public func region(for s: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion {
        let offset = s.start * AttributeMap.pageSize
        return MemoryRegion(slot: slot, flags: .guestMemfd, guestPhysicalAddress: offset,
                            size: (s.end - s.start) * AttributeMap.pageSize,
                            userspaceAddress: memory.sharedBacking.mapping.address + offset,
                            guestMemfd: memory.privateBacking.fd.rawValue, guestMemfdOffset: offset)
    }

    public func view(of s: Segment) -> MemslotInfo.View { .plain }

    public func classify(_ gpa: UInt64, ramSize: UInt64) -> GPAClassification? {
        gpa < ramSize ? GPAClassification(ramOffset: gpa, privateView: true) : nil
    }
}
