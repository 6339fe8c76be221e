#if canImport(Glibc)
import Glibc
#endif
import Schema
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
    /// Memslots installed once and never re-laid (kernel engine: the shared alias), as RAM-page segments, and
    /// the memslot for each.
    func staticSegments(pageCount: UInt64) -> [Segment]
    func staticRegion(for segment: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion
    /// Why converting `pages` (to private or not, discarding the side given up or not) is refused on this engine,
    /// or nil. Revoking asks as a conversion to shared without discard.
    func conversionRefusal(pages: Range<UInt64>, toPrivate: Bool, discard: Bool) -> VMMError?
}

extension AttributeEngine {
    public func staticSegments(pageCount: UInt64) -> [Segment] { [] }
    public func staticRegion(for segment: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion {
        region(for: segment, slot: slot, memory: memory)
    }
    public func conversionRefusal(pages: Range<UInt64>, toPrivate: Bool, discard: Bool) -> VMMError? { nil }
}

/// `window` cut into pieces of at most 2^18 pages (1 GiB), well inside KVM_MEM_MAX_NR_PAGES.
func gigabytePieces(_ window: Range<UInt64>, isPrivate: Bool) -> [Segment] {
    let maxPages: UInt64 = 1 << 18
    var out: [Segment] = []
    var start = window.lowerBound
    while start < window.upperBound {
        let stop = min(window.upperBound, (start / maxPages + 1) * maxPages)
        out.append(Segment(start: start, end: stop, isPrivate: isPrivate))
        start = stop
    }
    return out
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
    /// RAM pages holding the built-in guest's image (code, tables, parameter blocks, stacks), or nil.
    public let imagePages: Range<UInt64>?

    public init(sharedAliasBit: Int, imagePages: Range<UInt64>? = nil) {
        alias = 1 << UInt64(sharedAliasBit)
        self.imagePages = imagePages
    }

    /// A conversion to shared with discard punches the private backing: over the guest's image that erases the code
    /// the vCPUs are running, and they run through zeros into an emulation error. Refused by name, with the way that
    /// keeps the bytes (discard false: each fetch then faults and is converted back, the code found again). The
    /// implicit conversions back to private, and any conversion without discard, go ahead.
    public func conversionRefusal(pages: Range<UInt64>, toPrivate: Bool, discard: Bool) -> VMMError? {
        guard discard, !toPrivate, let image = imagePages, pages.overlaps(image) else { return nil }
        return VMMError(.invalidRange, "pages \(image.lowerBound)-\(image.upperBound - 1) hold the built-in guest's code,"
            + " tables and stacks: converting them to shared with discard would erase the code the vCPUs are running"
            + " (they would run through zeros into an emulation error); convert them with discard false to keep their bytes")
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
                                    userspaceAddress: (b.mapping?.address ?? memory.sharedMapping.address) + offset,
                                    guestMemfd: b.fd.rawValue, guestMemfdOffset: offset)
            }
            return MemoryRegion(slot: slot, guestPhysicalAddress: offset, size: size,
                                userspaceAddress: (b.mapping?.address ?? 0) + offset)
        }
        return MemoryRegion(slot: slot, guestPhysicalAddress: offset | alias, size: size,
                            userspaceAddress: memory.sharedMapping.address + offset)
    }

    public func view(of s: Segment) -> MemslotInfo.View { s.isPrivate ? .private : .shared }

    public func classify(_ gpa: UInt64, ramSize: UInt64) -> GPAClassification? {
        let shared = gpa & alias != 0
        let offset = gpa & ~alias
        guard offset < ramSize else { return nil }
        return GPAClassification(ramOffset: offset, privateView: !shared)
    }
}

/// The kernel engine: real `KVM_SET_MEMORY_ATTRIBUTES` and real `KVM_EXIT_MEMORY_FAULT`, on a VM type with
/// private memory (`KVM_X86_SW_PROTECTED_VM` in the lab). See docs/attribute-engines.md, "kernel engine".
///
/// Such a guest cannot say which view it wants (no C-bit, no shared bit): KVM takes the attribute as the truth
/// and exits only where the view that attribute names has no backing. So the same two views as the vmm engine
/// are laid out for KVM to enforce:
/// - the **private view** at the RAM's own GPAs: KVM attribute PRIVATE on every page (set once), a
///   `KVM_MEM_GUEST_MEMFD` memslot over each private run and none over shared runs, so a guest access there to a
///   shared page is a private access without a memslot: `KVM_EXIT_MEMORY_FAULT`, flags PRIVATE;
/// - the **shared view** at `gpa | alias`: plain memslots over the whole shared memfd, whose KVM attributes are
///   the VM's attribute map (each conversion is `KVM_SET_MEMORY_ATTRIBUTES` there), so a guest access through
///   the alias to a private page is a private access to a memslot without guest_memfd: `KVM_EXIT_MEMORY_FAULT`,
///   flags PRIVATE (the attribute it met; the guest wanted the shared view, and the VMM converts that way).
/// The kernel engine does not map the guest_memfd (Linux 6.12 could not; 7.3 could, but private memory stays out of
/// the VMM's reach, as on a confidential VM), so the VMM cannot write a private image: the guest's image
/// pages (`imagePages`) are a plain shared memslot in the private view, as the upstream selftests keep their code,
/// and conversions there are refused.
public final class KernelEngine: AttributeEngine {
    public let kind = AttributeEngineKind.kernel
    public let alias: UInt64
    public var sharedAlias: UInt64? { alias }
    /// RAM pages that stay shared in the private view (the guest's image), or nil.
    public let imagePages: Range<UInt64>?

    public init(sharedAliasBit: Int, imagePages: Range<UInt64>?) {
        alias = 1 << UInt64(sharedAliasBit)
        self.imagePages = imagePages
    }

    public func installInitialAttributes(_ memory: GuestMemory) throws(VMMError) {
        // The private view is private everywhere but the image; the alias carries the map.
        let pages = memory.pageCount
        let image = imagePages ?? 0..<0
        for run in [0..<image.lowerBound, image.upperBound..<pages] where !run.isEmpty {
            try set(address: run.lowerBound * AttributeMap.pageSize, pages: UInt64(run.count), toPrivate: true, memory)
        }
        for run in memory.attributes.runs(pages: 0..<pages) where run.isPrivate {
            try set(address: run.gpa | alias, pages: run.size / AttributeMap.pageSize, toPrivate: true, memory)
        }
    }

    public func setAttributes(pages: Range<UInt64>, toPrivate: Bool, memory: GuestMemory) throws(VMMError) {
        try set(address: (pages.lowerBound * AttributeMap.pageSize) | alias, pages: UInt64(pages.count),
                toPrivate: toPrivate, memory)
    }

    private func set(address: UInt64, pages: UInt64, toPrivate: Bool, _ memory: GuestMemory) throws(VMMError) {
        do {
            try memory.vm.setMemoryAttributes(address: address, size: pages * AttributeMap.pageSize,
                                              attributes: toPrivate ? .private : [])
        } catch {
            throw VMMError(error.errno == .invalidArgument || error.errno == .inappropriateIOCTLForDevice ? .unsupported : .genericError,
                           error.description, errno: error.errno)
        }
    }

    public func segments(window: Range<UInt64>, attributes: AttributeMap, revoked: AttributeMap) -> [Segment] {
        var out: [Segment] = []
        let image = imagePages ?? 0..<0
        for p in pieces(window: window, attributes: attributes, revoked: revoked) where !p.revoked {
            let run = p.start..<p.end
            let inImage = run.clamped(to: image)
            // Outside the image only private runs have a memslot (guest_memfd); the image is one plain slot.
            var parts: [(Range<UInt64>, Bool)] = []
            if !inImage.isEmpty {
                if run.lowerBound < inImage.lowerBound { parts.append((run.lowerBound..<inImage.lowerBound, p.isPrivate)) }
                parts.append((inImage, false))
                if inImage.upperBound < run.upperBound { parts.append((inImage.upperBound..<run.upperBound, p.isPrivate)) }
            } else {
                parts.append((run, p.isPrivate))
            }
            for (r, priv) in parts {
                let isImage = !r.clamped(to: image).isEmpty
                guard priv || isImage else { continue }
                if let last = out.last, last.end == r.lowerBound, last.isPrivate == priv {
                    out[out.count - 1].end = r.upperBound
                } else {
                    out.append(Segment(start: r.lowerBound, end: r.upperBound, isPrivate: priv))
                }
            }
        }
        return out
    }

    public func region(for s: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion {
        let offset = s.start * AttributeMap.pageSize
        let size = (s.end - s.start) * AttributeMap.pageSize
        if s.isPrivate {
            return MemoryRegion(slot: slot, flags: .guestMemfd, guestPhysicalAddress: offset, size: size,
                                userspaceAddress: memory.sharedMapping.address + offset,
                                guestMemfd: memory.privateBacking.fd.rawValue, guestMemfdOffset: offset)
        }
        // The image: the private view's GPAs, shared memory.
        return MemoryRegion(slot: slot, guestPhysicalAddress: offset, size: size,
                            userspaceAddress: memory.sharedMapping.address + offset)
    }

    public func view(of s: Segment) -> MemslotInfo.View { s.isPrivate ? .private : .plain }

    public func staticSegments(pageCount: UInt64) -> [Segment] {
        gigabytePieces(0..<pageCount, isPrivate: false)
    }

    /// The shared view: a plain memslot at `gpa | alias` over the shared memfd.
    public func staticRegion(for s: Segment, slot: UInt16, memory: GuestMemory) -> MemoryRegion {
        let offset = s.start * AttributeMap.pageSize
        return MemoryRegion(slot: slot, guestPhysicalAddress: offset | alias, size: (s.end - s.start) * AttributeMap.pageSize,
                            userspaceAddress: memory.sharedMapping.address + offset)
    }

    public func conversionRefusal(pages: Range<UInt64>, toPrivate: Bool, discard: Bool) -> VMMError? {
        guard let image = imagePages, pages.overlaps(image) else { return nil }
        return VMMError(.unsupported, "pages \(image.lowerBound)-\(image.upperBound - 1) hold the guest's image (code, tables, stacks) in shared"
            + " memory: the kernel engine does not map guest_memfd (private memory stays out of the VMM's reach, as on a"
            + " confidential VM; Linux 6.12 could not map it at all), so it cannot give the guest a private copy, and"
            + " without a memslot there KVM faults the guest's own table reads into it (#GP, seen in the lab); the kernel"
            + " engine neither converts nor revokes them")
    }

    public func classify(_ gpa: UInt64, ramSize: UInt64) -> GPAClassification? {
        let shared = gpa & alias != 0
        let offset = gpa & ~alias
        guard offset < ramSize else { return nil }
        // The image's GPAs serve shared memory: an access there uses the shared view.
        let inImage = imagePages?.contains(offset / AttributeMap.pageSize) ?? false
        return GPAClassification(ramOffset: offset, privateView: !shared && !inImage)
    }
}
