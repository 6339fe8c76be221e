import HostTracing
import Schema

/// vmscope's own VMM beside the kernel's trace of it (issue 29): the VMM reports its private/shared map, and the
/// trace keeps the one KVM accepted (`kvm_vm_set_mem_attributes` paired with each ioctl's return). Where both know
/// a page they must agree; a page where they do not, for longer than the two take to catch up with a conversion,
/// is an alarm on the status line: the VMM's account of its memory and the kernel's differ.
public struct MapAgreement: Sendable {
    /// How long a page may disagree before it is an alarm: the VMM's map reaches the inspector after its
    /// `MEMORY_ATTRIBUTES_CHANGED` event and a query; the trace after a read of the kernel's buffer.
    public var graceNs: UInt64 = 2_000_000_000
    /// Pages disagreeing now (at most `limit`), and since when (the inspector's clock).
    private var since: [UInt64: UInt64] = [:]
    public static let limit = 256
    /// Pages compared at the last check (known to both).
    public private(set) var comparedPages: UInt64 = 0

    public init() {}

    /// RAM pages (the VMM's numbering) in [0, `pages`) where `traced` knows a state other than the VMM's `runs`,
    /// at most `limit`. `traced` is in KVM's GFNs: vmscope's kernel engine keeps the VM's map at the shared alias
    /// (the private view is private once, at start: docs/attribute-engines.md), so the VMM's page g is KVM's
    /// `aliasGFN` + g. Returns the pages and how many pages both knew.
    public static func disagreements(traced: [TracedAttributes.Run], vmm runs: [AttributeRun], aliasGFN: UInt64, pages: UInt64,
                                     limit: Int = MapAgreement.limit) -> (pages: [UInt64], compared: UInt64) {
        var out: [UInt64] = []
        var compared: UInt64 = 0
        var k = 0
        for t in traced {
            let lo = max(t.start, aliasGFN), hi = min(t.end, aliasGFN.saturatingAdd(pages))
            guard lo < hi else { continue }
            let a = lo - aliasGFN, b = hi - aliasGFN
            // The VMM's runs are sorted and apart; walk them alongside.
            while k < runs.count && (runs[k].gpa.saturatingAdd(runs[k].size)) >> 12 <= a { k += 1 }
            var j = k
            while j < runs.count && runs[j].gpa >> 12 < b {
                let rs = max(a, runs[j].gpa >> 12), re = min(b, runs[j].gpa.saturatingAdd(runs[j].size) >> 12)
                if rs < re {
                    compared += re - rs
                    if runs[j].isPrivate != t.isPrivate {
                        var g = rs
                        while g < re && out.count < limit { out.append(g); g += 1 }
                    }
                }
                j += 1
            }
        }
        return (out, compared)
    }

    /// Takes this check's disagreeing pages; returns the alarm's text while some page has disagreed for
    /// `graceNs` or longer, else nil.
    public mutating func check(_ pages: [UInt64], compared: UInt64, nowNs: UInt64) -> String? {
        comparedPages = compared
        var next: [UInt64: UInt64] = [:]
        for g in pages { next[g] = since[g] ?? nowNs }
        since = next
        let old = since.filter { nowNs &- $0.value >= graceNs }
        guard let first = old.keys.min() else { return nil }
        let count = old.count >= Self.limit ? "\(Self.limit)+" : "\(old.count)"
        return "MAP DISAGREES: \(count) page\(old.count == 1 ? "" : "s") where the VMM's map and KVM's traced one differ for over \(graceNs / 1_000_000_000) s (first gfn 0x\(String(first, radix: 16)))"
    }
}

/// Conversions KVM accepted lately (KVM's GFNs, at the trace's times): a page one of them covered within the grace
/// period may still be on its way to the other source (the VMM's map reaches the inspector after an event and a
/// query), so a disagreement there is not yet one. A guest that flips a bounce buffer every few milliseconds keeps
/// its pages out of the comparison; a page that stays wrong with nothing converting it raises the alarm.
public struct RecentConversions: Sendable {
    private var entries: [(range: Range<UInt64>, atNs: UInt64)] = []
    public static let bound = 65_536

    public init() {}

    public mutating func add(_ range: Range<UInt64>, atNs: UInt64) {
        guard !range.isEmpty else { return }
        entries.append((range, atNs))
        if entries.count > Self.bound { entries.removeFirst(entries.count - Self.bound) }
    }

    /// Forgets what is older than `ns`.
    public mutating func forget(before ns: UInt64) {
        if let keep = entries.firstIndex(where: { $0.atNs >= ns }) { entries.removeFirst(keep) } else { entries.removeAll() }
    }

    /// `pages` (the VMM's numbering) less those a remembered conversion covered (at `aliasGFN` + page in KVM's).
    public func excluding(_ pages: [UInt64], aliasGFN: UInt64) -> [UInt64] {
        guard !entries.isEmpty, !pages.isEmpty else { return pages }
        var merged: [Range<UInt64>] = []
        for r in entries.map(\.range).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, r.lowerBound <= last.upperBound { merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound) }
            else { merged.append(r) }
        }
        return pages.filter { g in
            let gfn = aliasGFN.saturatingAdd(g)
            var lo = 0, hi = merged.count
            while lo < hi { let mid = (lo + hi) / 2; if merged[mid].upperBound <= gfn { lo = mid + 1 } else { hi = mid } }
            return !(lo < merged.count && merged[lo].contains(gfn))
        }
    }
}
