import Schema
import Algorithms
import Foundation
import KVM

/// One memslot as the VMM installed it (`query-memslots`).
public struct MemslotInfo: Sendable, Equatable {
    public typealias View = MemslotView
    public typealias Backing = MemslotBacking

    public var slot: Int
    public var addressSpace: Int
    public var gpa: UInt64
    public var size: UInt64
    public var flags: MemoryRegionFlags
    public var view: View
    public var backing: Backing
    public var guestMemfdOffset: UInt64?
    public var userspaceAddress: UInt64
}

/// What a conversion changed.
public struct ConversionResult: Sendable, Equatable {
    /// Runs of the attribute map that differ from before (0: the range already had that attribute).
    public var runsChanged: Int
    public var durationNs: UInt64
    public var memslotsChanged: Bool
}

/// Memory a VM's RAM lives in: a file (guest_memfd or memfd) and the VMM's mapping of it, where it has one.
public final class RAMBacking: Sendable {
    public let kind: MemslotInfo.Backing
    public let fd: OwnedFileDescriptor
    /// The VMM's mapping; nil for a guest_memfd the kernel does not let it map (no `GUEST_MEMFD_FLAG_MMAP`,
    /// e.g. Linux 6.12 or a private-memory VM type): then private pages are unreachable from the host, as on a
    /// confidential VM.
    public let mapping: HostMapping?
    /// Kept so the guest_memfd outlives its memslots.
    let guestMemfd: GuestMemfd?
    let memoryFile: MemoryFile?

    init(guestMemfd: GuestMemfd) throws(KVMError) {
        self.kind = .guestMemfd
        self.fd = guestMemfd.fd
        self.guestMemfd = guestMemfd
        self.memoryFile = nil
        self.mapping = guestMemfd.flags.contains(.mmap) ? try guestMemfd.map() : nil
    }

    init(memoryFile: MemoryFile) throws(KVMError) {
        self.kind = .memfd
        self.fd = memoryFile.fd
        self.memoryFile = memoryFile
        self.guestMemfd = nil
        self.mapping = try HostMapping.shared(fd: memoryFile.fd.rawValue, size: Int(memoryFile.size))
    }

    /// Frees `[offset, offset+length)`: later reads see zeros.
    func discard(offset: UInt64, length: UInt64) throws(KVMError) {
        if let guestMemfd { try guestMemfd.punchHole(offset: offset, length: length) }
        else if let memoryFile { try memoryFile.punchHole(offset: offset, length: length) }
    }
}

/// A view of a GPA: which RAM page it names and through which view, or not RAM at all.
public struct GPAClassification: Sendable, Equatable {
    public var ramOffset: UInt64
    public var privateView: Bool
    public var gfn: UInt64 { ramOffset / AttributeMap.pageSize }
}

/// One installed memslot covering RAM pages `[start, end)`.
struct SlotEntry: Equatable {
    var start: UInt64
    var end: UInt64
    var slot: UInt16
    var view: MemslotInfo.View
    /// The segment's `isPrivate` as the engine laid it.
    var isPrivate: Bool
    var segment: Segment { Segment(start: start, end: end, isPrivate: isPrivate) }
}

/// A stretch of RAM pages the engine wants one memslot for.
public struct Segment: Sendable, Hashable {
    public var start: UInt64
    public var end: UInt64
    public var isPrivate: Bool
}

/// The VM's RAM: backings, attribute map, revoked pages and the memslots that implement them.
///
/// Every method expects the caller to hold `lock` (the VMM takes it around each operation); nothing here
/// blocks on anything but KVM ioctls.
public final class GuestMemory: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `lock`.
    public let lock = NSLock()
    public let vm: VirtualMachine
    public let ramSize: UInt64
    public let engine: any AttributeEngine
    public let privateBacking: RAMBacking
    public let sharedBacking: RAMBacking
    /// The shared backing's mapping (a memfd: always mapped).
    public let sharedMapping: HostMapping
    /// The most memslots this VMM will use (the kernel's `KVM_CAP_NR_MEMSLOTS`, or less when configured).
    public let memslotLimit: Int

    public private(set) var attributes: AttributeMap
    /// Pages whose mapping `revoke` removed (true = revoked), until converted or remapped.
    public private(set) var revoked: AttributeMap
    private(set) var slots: [SlotEntry] = []
    /// Memslots the engine installs once and never re-lays (the kernel engine's shared alias).
    private(set) var staticSlots: [SlotEntry] = []
    private var freeSlots: [UInt16]
    /// RAM pages at which a memslot always ends (the guest's own code and tables live below the first one, so
    /// conversions elsewhere never take the memslot it executes from away, not even for a moment).
    public let pinnedBoundaries: [UInt64]
    /// No memslot crosses a multiple of this many RAM pages. KVM allocates per-page metadata for every memslot it
    /// creates (rmap and write-tracking arrays under shadow paging), so splitting a slot costs O(its size): without
    /// a bound, each conversion inside a 1 TiB VM would rebuild a slot of up to 1 TiB.
    public let memslotSpan: UInt64
    /// Bumped on every memslot change (`MEMSLOTS_CHANGED.generation`).
    public private(set) var generation: UInt64 = 0

    public var pageCount: UInt64 { attributes.pageCount }

    /// Runs `body` holding `lock`: the one way the VMM takes it.
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Whether `revoke` removed page `gfn`'s mapping (in `revoked`, "private" means revoked).
    public func isRevoked(gfn: UInt64) -> Bool { revoked.isPrivate(gfn: gfn) }

    /// Whether any of `pages` is revoked.
    public func anyRevoked(pages: Range<UInt64>) -> Bool { !revoked.isUniform(pages: pages, private: false) }

    init(vm: VirtualMachine, ramSize: UInt64, engine: any AttributeEngine, privateBacking: RAMBacking,
         sharedBacking: RAMBacking, memslotLimit: Int, pinnedBoundaries: [UInt64] = [],
         memslotSpan: UInt64 = GuestMemory.defaultMemslotSpan, initiallyShared: Range<UInt64>? = nil) throws(VMMError) {
        guard let sharedMapping = sharedBacking.mapping else {
            throw VMMError(.genericError, "the shared backing is not mapped")
        }
        self.sharedMapping = sharedMapping
        self.memslotSpan = max(memslotSpan / AttributeMap.pageSize, 1)
        self.pinnedBoundaries = pinnedBoundaries.filter { $0 > 0 && $0 < ramSize / AttributeMap.pageSize }.sorted()
        self.vm = vm
        self.ramSize = ramSize
        self.engine = engine
        self.privateBacking = privateBacking
        self.sharedBacking = sharedBacking
        self.memslotLimit = memslotLimit
        let pages = ramSize / AttributeMap.pageSize
        attributes = AttributeMap(pageCount: pages, initiallyPrivate: true)
        if let initiallyShared, !initiallyShared.isEmpty { attributes.set(pages: initiallyShared.clamped(to: 0..<pages), private: false) }
        revoked = AttributeMap(pageCount: pages, initiallyPrivate: false)
        freeSlots = (0..<UInt16(min(memslotLimit, Int(UInt16.max)))).reversed()
        try engine.installInitialAttributes(self)
        for seg in engine.staticSegments(pageCount: pages) {
            guard let id = freeSlots.popLast() else { throw VMMError(.unsupported, "out of memslots (limit \(memslotLimit))") }
            do { try vm.setUserMemoryRegion(engine.staticRegion(for: seg, slot: id, memory: self)) } catch { throw VMMError.kvm(error) }
            staticSlots.append(SlotEntry(start: seg.start, end: seg.end, slot: id, view: .shared, isPrivate: seg.isPrivate))
        }
        try relayout(window: 0..<pages)
    }

    // MARK: Queries

    public var memslots: [MemslotInfo] {
        slots.map { info(for: $0) } + staticSlots.map { info(for: $0, isStatic: true) }
    }

    public var memslotCount: Int { slots.count + staticSlots.count }

    func info(for e: SlotEntry, isStatic: Bool = false) -> MemslotInfo {
        let region = isStatic ? engine.staticRegion(for: e.segment, slot: e.slot, memory: self)
                              : engine.region(for: e.segment, slot: e.slot, memory: self)
        let backing: MemslotInfo.Backing
        switch e.view {
        case .private: backing = region.flags.contains(.guestMemfd) ? .guestMemfd : privateBacking.kind
        case .shared: backing = sharedBacking.kind
        case .plain: backing = region.flags.contains(.guestMemfd) ? .guestMemfd : sharedBacking.kind
        }
        return MemslotInfo(slot: Int(e.slot), addressSpace: 0, gpa: region.guestPhysicalAddress, size: region.size,
                           flags: region.flags, view: e.view, backing: backing,
                           guestMemfdOffset: region.flags.contains(.guestMemfd) ? region.guestMemfdOffset : nil,
                           userspaceAddress: region.userspaceAddress)
    }

    /// Index of the first memslot that ends after RAM page `gfn` (binary search; slots are sorted and disjoint).
    private func firstSlotIndex(endingAfter gfn: UInt64) -> Int {
        slots.partitioningIndex { $0.end > gfn }
    }

    /// Indices of the memslots that overlap RAM pages `window`.
    private func slotIndices(overlapping window: Range<UInt64>) -> Range<Int> {
        let first = firstSlotIndex(endingAfter: window.lowerBound)
        var last = first
        while last < slots.count && slots[last].start < window.upperBound { last += 1 }
        return first..<last
    }

    /// The memslot covering RAM page `gfn`, if one does.
    func slot(containing gfn: UInt64) -> SlotEntry? {
        let i = firstSlotIndex(endingAfter: gfn)
        return i < slots.count && slots[i].start <= gfn ? slots[i] : nil
    }

    /// What a fault record says about RAM page `gfn`: its attribute (`none` outside RAM) and its memslot.
    func faultContext(gfn: UInt64?) -> (attribute: PageAttribute, slot: Int?) {
        guard let gfn, gfn < pageCount else { return (.none, nil) }
        return (attributes.isPrivate(gfn: gfn) ? .private : .shared, slot(containing: gfn).map { Int($0.slot) })
    }

    /// Which RAM page and view a guest-physical address names, or nil when it is not RAM.
    public func classify(_ gpa: UInt64) -> GPAClassification? {
        engine.classify(gpa, ramSize: ramSize)
    }

    /// Validates a byte range: page-aligned, non-empty, inside RAM.
    func pages(gpa: UInt64, size: UInt64) throws(VMMError) -> Range<UInt64> {
        let page = AttributeMap.pageSize
        guard size > 0 else { throw VMMError(.invalidRange, "size is 0") }
        guard gpa % page == 0, size % page == 0 else {
            throw VMMError(.invalidRange, "gpa \(hex(gpa)) size \(hex(size)) is not 4 KiB aligned")
        }
        let (end, overflow) = gpa.addingReportingOverflow(size)
        guard !overflow, end <= ramSize else {
            throw VMMError(.invalidRange, "[\(hex(gpa)), \(overflow ? "overflow" : hex(end))) is outside RAM [0, \(hex(ramSize)))")
        }
        return (gpa / page)..<(end / page)
    }

    // MARK: Conversion

    /// Converts `[gpa, gpa+size)` to private or shared; all or nothing.
    ///
    /// `discard` frees the backing of the side given up. A conversion also gives revoked pages their
    /// mapping back. Refused (nothing changed) when the range is invalid or the layout would need more
    /// memslots than `memslotLimit`.
    public func convert(gpa: UInt64, size: UInt64, toPrivate: Bool, discard: Bool) throws(VMMError) -> ConversionResult {
        let started = HostClock.monotonicNs()
        let range = try pages(gpa: gpa, size: size)
        if let refusal = engine.conversionRefusal(pages: range, toPrivate: toPrivate, discard: discard) { throw refusal }
        let someRevoked = anyRevoked(pages: range)
        if attributes.isUniform(pages: range, private: toPrivate) && !someRevoked {
            return ConversionResult(runsChanged: 0, durationNs: HostClock.monotonicNs() - started, memslotsChanged: false)
        }
        var newAttributes = attributes
        newAttributes.set(pages: range, private: toPrivate)
        var newRevoked = revoked
        newRevoked.set(pages: range, private: false)
        let window = neighbourhood(range)
        try checkLimit(window: window, attributes: newAttributes, revoked: newRevoked)

        let runsBefore = attributes.runs(pages: window)
        try engine.setAttributes(pages: range, toPrivate: toPrivate, memory: self)
        let oldAttributes = attributes, oldRevoked = revoked
        attributes = newAttributes
        revoked = newRevoked
        do throws(VMMError) {
            let changed = try relayout(window: window)
            if discard {
                let side = toPrivate ? sharedBacking : privateBacking
                do { try side.discard(offset: gpa, length: size) } catch { throw VMMError.kvm(error) }
            }
            let runsAfter = attributes.runs(pages: window)
            let runsChanged = runsAfter.filter { !runsBefore.contains($0) }.count
            return ConversionResult(runsChanged: max(runsChanged, 1), durationNs: HostClock.monotonicNs() - started,
                                    memslotsChanged: changed)
        } catch {
            // Put the map back as it was; relayout brings the memslots back with it.
            attributes = oldAttributes
            revoked = oldRevoked
            // KVM's attributes as they were, run by run: the range need not have been all of the other kind.
            for run in oldAttributes.runs(pages: range) {
                try? engine.setAttributes(pages: run.gpa / AttributeMap.pageSize..<(run.gpa + run.size) / AttributeMap.pageSize,
                                          toPrivate: run.isPrivate, memory: self)
            }
            _ = try? relayout(window: window)
            throw error
        }
    }

    /// Removes the mapping of `[gpa, gpa+size)` so the guest's next access faults (fault injection `revoke`).
    public func revoke(gpa: UInt64, size: UInt64) throws(VMMError) {
        let range = try pages(gpa: gpa, size: size)
        if let refusal = engine.conversionRefusal(pages: range, toPrivate: false, discard: false) { throw refusal }
        try setRevoked(pages: range, true)
    }

    /// Gives revoked page `gfn` its mapping back (attribute unchanged).
    func remap(gfn: UInt64) throws(VMMError) {
        guard isRevoked(gfn: gfn) else { return }
        try setRevoked(pages: gfn..<(gfn + 1), false)
    }

    /// Marks `range` revoked or not and re-lays the memslots around it; all or nothing.
    private func setRevoked(pages range: Range<UInt64>, _ value: Bool) throws(VMMError) {
        var newRevoked = revoked
        newRevoked.set(pages: range, private: value)
        let window = neighbourhood(range)
        try checkLimit(window: window, attributes: attributes, revoked: newRevoked)
        let old = revoked
        revoked = newRevoked
        do throws(VMMError) { _ = try relayout(window: window) } catch {
            revoked = old
            _ = try? relayout(window: window)
            throw error
        }
    }

    /// The pages whose memslots a change of `range` can touch, before `extend`: the range and one page either side.
    /// Outside it every run edge stays an edge, so the memslots there stay as they are; the slots holding the
    /// neighbouring pages are the ones a merge can join.
    private func neighbourhood(_ range: Range<UInt64>) -> Range<UInt64> {
        (range.lowerBound == 0 ? 0 : range.lowerBound - 1)..<min(range.upperBound + 1, pageCount)
    }

    /// Frees the backing of `[gpa, gpa+size)` on whichever side each page currently uses (injection `discard`).
    public func discardContents(gpa: UInt64, size: UInt64) throws(VMMError) {
        let range = try pages(gpa: gpa, size: size)
        for run in attributes.runs(pages: range) {
            let side = run.isPrivate ? privateBacking : sharedBacking
            do { try side.discard(offset: run.gpa, length: run.size) } catch { throw VMMError.kvm(error) }
        }
    }

    private func checkLimit(window: Range<UInt64>, attributes a: AttributeMap, revoked r: AttributeMap) throws(VMMError) {
        let extended = extend(window)
        let removed = slotIndices(overlapping: extended).count
        let added = wantedSegments(window: extended, attributes: a, revoked: r).count
        let needed = memslotCount - removed + added
        if needed > memslotLimit {
            throw VMMError(.unsupported, "the new layout needs \(needed) memslots; the limit is \(memslotLimit)"
                + " (KVM_CAP_NR_MEMSLOTS or --memslot-limit): nothing was changed")
        }
    }

    /// `window` grown to the edges of the memslots it touches.
    private func extend(_ window: Range<UInt64>) -> Range<UInt64> {
        var lo = window.lowerBound, hi = window.upperBound
        if let s = slot(containing: lo) { lo = min(lo, s.start) }
        if hi > 0, let s = slot(containing: hi - 1) { hi = max(hi, s.end) }
        return lo..<hi
    }

    /// Replaces the memslots touching `window` with what the engine wants there now. Returns whether any changed.
    @discardableResult
    func relayout(window: Range<UInt64>) throws(VMMError) -> Bool {
        let w = extend(window)
        let indices = slotIndices(overlapping: w)
        let first = indices.lowerBound, last = indices.upperBound
        let old = Array(slots[indices])
        let wanted = wantedSegments(window: w, attributes: attributes, revoked: revoked)
        func shape(_ e: SlotEntry) -> Segment { e.segment }
        let oldShape = old.map(shape)
        if oldShape == wanted { return false }

        // Only the memslots that differ change: delete first (KVM refuses overlapping slots), then create.
        let wantedSet = Set(wanted), oldSet = Set(oldShape)
        let keep = old.filter { wantedSet.contains(shape($0)) }
        for e in old where !wantedSet.contains(shape(e)) {
            do { try vm.deleteMemoryRegion(slot: e.slot) } catch { throw VMMError.kvm(error) }
            freeSlots.append(e.slot)
        }
        slots.removeSubrange(first..<last)
        slots.insert(contentsOf: keep, at: first)
        var created: [SlotEntry] = []
        for seg in wanted where !oldSet.contains(seg) {
            guard let id = freeSlots.popLast() else {
                throw VMMError(.unsupported, "out of memslots (limit \(memslotLimit))")
            }
            let region = engine.region(for: seg, slot: id, memory: self)
            do { try vm.setUserMemoryRegion(region) } catch {
                freeSlots.append(id)
                slots.replaceSubrange(first..<(first + keep.count), with: (keep + created).sorted { $0.start < $1.start })
                throw VMMError.kvm(error)
            }
            created.append(SlotEntry(start: seg.start, end: seg.end, slot: id, view: engine.view(of: seg),
                                     isPrivate: seg.isPrivate))
        }
        slots.replaceSubrange(first..<(first + keep.count), with: (keep + created).sorted { $0.start < $1.start })
        generation += 1
        return true
    }

    /// Bytes: the default `memslotSpan`.
    public static let defaultMemslotSpan: UInt64 = 1 << 30

    /// The first RAM page after `gfn` at which a memslot must end: a pinned boundary or a multiple of the span.
    func nextCut(after gfn: UInt64) -> UInt64 {
        let lo = pinnedBoundaries.partitioningIndex { $0 > gfn }
        let spanCut = (gfn / memslotSpan + 1) * memslotSpan
        return lo < pinnedBoundaries.count ? min(pinnedBoundaries[lo], spanCut) : spanCut
    }

    /// The engine's segments for `window`, cut at the pinned boundaries and the span multiples.
    func wantedSegments(window: Range<UInt64>, attributes a: AttributeMap, revoked r: AttributeMap) -> [Segment] {
        var out: [Segment] = []
        for var seg in engine.segments(window: window, attributes: a, revoked: r) {
            var cut = nextCut(after: seg.start)
            while cut < seg.end {
                out.append(Segment(start: seg.start, end: cut, isPrivate: seg.isPrivate))
                seg.start = cut
                cut = nextCut(after: cut)
            }
            out.append(seg)
        }
        return out
    }

    // MARK: Completing an access the VMM emulates

    /// The host address of RAM offset `offset` in the given view's backing; nil where the VMM cannot map it
    /// (a guest_memfd without `GUEST_MEMFD_FLAG_MMAP`).
    func hostPointer(ramOffset: UInt64, privateView: Bool) -> UnsafeMutableRawPointer? {
        let backing = privateView ? privateBacking : sharedBacking
        return backing.mapping?.base.advanced(by: Int(ramOffset))
    }

    /// The mapping holding RAM page `gfn` as the guest sees it now (its attribute's backing), or nil where the
    /// VMM cannot map that backing.
    public func currentMapping(gfn: UInt64) -> HostMapping? {
        guard gfn < pageCount else { return nil }
        return attributes.isPrivate(gfn: gfn) ? privateBacking.mapping : sharedMapping
    }

    /// Why the host cannot read private pages, for messages.
    public static let privateUnmappable = "private pages live in a guest_memfd this kernel does not let the VMM map"
        + " (no GUEST_MEMFD_FLAG_MMAP: Linux before 6.18, or a private-memory VM type)"

    /// `read-memory`'s bytes: RAM through one view, or (`privateView` nil) each page through its own current attribute.
    /// Caller holds `lock`.
    func read(gpa: UInt64, size: UInt64, privateView: Bool?) throws(VMMError)
        -> (bytes: [UInt8], views: [(offset: UInt64, size: UInt64, isPrivate: Bool)]) {
        let (end, overflow) = gpa.addingReportingOverflow(size)
        guard !overflow && end <= ramSize else {
            throw VMMError(.invalidRange, "[\(hex(gpa)), +\(size)) is outside RAM")
        }
        var views: [(offset: UInt64, size: UInt64, isPrivate: Bool)] = []
        var at = gpa
        while at < end {
            let pageEnd = min(end, (at / 4096 + 1) * 4096)
            let isPrivate = privateView ?? attributes.isPrivate(gfn: at / 4096)
            if let last = views.last, last.isPrivate == isPrivate {
                views[views.count - 1].size += pageEnd - at
            } else {
                views.append((at - gpa, pageEnd - at, isPrivate))
            }
            at = pageEnd
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(size))
        for v in views {
            guard let p = hostPointer(ramOffset: gpa + v.offset, privateView: v.isPrivate) else {
                throw VMMError(.unsupported, "read-memory \(hex(gpa + v.offset)) through the private view: \(GuestMemory.privateUnmappable)")
            }
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: Int(v.size)))
        }
        return (bytes, views)
    }
}
