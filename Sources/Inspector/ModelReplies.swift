import Algorithms
import DequeModule
import ControlProtocol

/// The model from query replies: the VM, memslots, attributes, vCPUs.
extension InspectorModel {
    public mutating func apply(vm d: VMDescription) { vm = VMInfo(d) }
    public mutating func apply(vm j: JSON) { apply(vm: VMDescription(json: j)) }

    public mutating func apply(memslots list: MemslotList) {
        memslots = list.memslots.map(MemslotRow.init)
        countPages()
        memslotsStale = false
    }
    public mutating func apply(memslots j: JSON) { apply(memslots: MemslotList(json: j)) }

    public mutating func apply(attributes a: AttributeRuns) {
        (runs, runsRepaired) = Self.normalised(a.runs)
        countPages()
        attributesStale = false
    }

    /// A peer's (or a file's) runs as every view needs them: sorted by address, none empty, none overlapping (a
    /// later run is clipped to where the one before it ends, or dropped), with what was done in words; nil when
    /// they were already so. O(n log n) only when they were not sorted.
    public static func normalised(_ input: [AttributeRun]) -> ([AttributeRun], String?) {
        var sorted = true, prevEnd: UInt64 = 0
        for (i, r) in input.enumerated() {
            if r.size == 0 || (i > 0 && r.gpa < prevEnd) { sorted = false; break }
            prevEnd = r.end
        }
        if sorted { return (input, nil) }
        var unsorted = 0, empty = 0, clipped = 0
        for i in input.indices.dropFirst() where input[i].gpa < input[i - 1].gpa { unsorted += 1 }
        var out: [AttributeRun] = []
        out.reserveCapacity(input.count)
        for r in input.sorted(by: { $0.gpa < $1.gpa }) {
            guard r.size > 0 else { empty += 1; continue }
            var r = r
            if let last = out.last, r.gpa < last.end {
                clipped += 1
                guard r.end > last.end else { continue }
                r = AttributeRun(gpa: last.end, size: r.end - last.end, isPrivate: r.isPrivate)
            }
            out.append(r)
        }
        let what = [unsorted > 0 ? "\(unsorted) out of order" : nil, clipped > 0 ? "\(clipped) overlapping" : nil,
                    empty > 0 ? "\(empty) empty" : nil].compactMap { $0 }.joined(separator: ", ")
        return (out, "attribute runs from the peer repaired (\(what)): sorted, overlaps clipped")
    }
    public mutating func apply(attributes j: JSON) { apply(attributes: AttributeRuns(json: j)) }

    public mutating func apply(vcpus list: VCPUList, intervalNs: UInt64) {
        apply(vcpus: list.vcpus.map(VCPURow.init), intervalNs: intervalNs)
    }
    public mutating func apply(vcpus j: JSON, intervalNs: UInt64) { apply(vcpus: VCPUList(json: j), intervalNs: intervalNs) }

    /// New vCPU rows; the old ones become `previousVCPUs` (changes highlighted, rates computed over `intervalNs`).
    public mutating func apply(vcpus rows: [VCPURow], intervalNs: UInt64) {
        previousVCPUs = vcpus
        // A peer or a file may claim any number of vCPUs (40,000 took replay --dump-at --text to 1.7 GB): the
        // views take KVM's own limit and say how many were left out.
        vcpus = rows.count > Self.maxVCPUs ? Array(rows.prefix(Self.maxVCPUs)) : rows
        vcpusLeftOut = rows.count - vcpus.count
        vcpuRefreshIntervalNs = intervalNs
    }

    /// Private/shared pages per memslot, from the runs (a slot in the shared alias counts its RAM pages).
    mutating func countPages() {
        // Every number here comes from the peer (or a recording): sums saturate rather than trap.
        let alias = aliasMask
        for i in memslots.indices {
            let start = memslots[i].ramStart(aliasMask: alias)
            let end = start.saturatingAdd(memslots[i].size)
            var p: UInt64 = 0, s: UInt64 = 0
            var k = firstRun(endingAfter: start)
            while k < runs.count && runs[k].gpa < end {
                let lo = max(start, runs[k].gpa), hi = min(end, runs[k].end)
                let overlap = hi > lo ? hi - lo : 0
                if runs[k].isPrivate { p = p.saturatingAdd(overlap) } else { s = s.saturatingAdd(overlap) }
                k += 1
            }
            memslots[i].privatePages = p / 4096
            memslots[i].sharedPages = s / 4096
        }
    }

    /// Index of the first run ending after `gpa` (runs are sorted and adjacent).
    public func firstRun(endingAfter gpa: UInt64) -> Int {
        runs.partitioningIndex { $0.end > gpa }
    }

    /// The attribute of the page at `gpa`, if RAM.
    public func attribute(at gpa: UInt64) -> Bool? {
        let k = firstRun(endingAfter: gpa)
        return k < runs.count && runs[k].gpa <= gpa ? runs[k].isPrivate : nil
    }

    /// The memslot mapping RAM address `gpa` (either view).
    public func memslot(containing gpa: UInt64) -> MemslotRow? {
        let alias = aliasMask
        return memslots.first { m in
            let start = m.ramStart(aliasMask: alias)
            return gpa >= start && gpa < start.saturatingAdd(m.size)
        }
    }
}
