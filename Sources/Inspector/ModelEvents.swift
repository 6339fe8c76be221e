import Algorithms
import ControlProtocol

/// The model from events and fault batches: conversions, memslot changes, vCPU states, the fault stream and its counts.
extension InspectorModel {
    private mutating func countEvent(nowNs: UInt64) {
        let second = nowNs / 1_000_000_000
        if second != eventSecond {
            eventRate = second == eventSecond + 1 ? eventsThisSecond : 0
            eventsThisSecond = 0
            eventSecond = second
        }
        eventsThisSecond += 1
    }

    /// A `MEMORY_FAULT` event decoded by `FaultBatch.decodeEvent` (the same as `apply(event:)` with its JSON).
    /// A whole batch at once: the same state as appending its records one by one, with the buffer trimmed and
    /// filled in bulk (a batch holds up to a thousand records).
    public mutating func apply(faults batch: FaultBatch, nowNs: UInt64) {
        countEvent(nowNs: nowNs)
        faultsDropped = faultsDropped.saturatingAdd(batch.dropped)
        guard !batch.records.isEmpty else { return }
        store(batch.records)
        for f in batch.records { recentFaults.append(gfn: canonicalGFN(f), at: nowNs) }
        countFaults(batch.records.count, nowNs: nowNs)
    }

    /// Marks the VMM's own records that kernel tracepoint events saw too (one row, both sources): each event goes
    /// to the newest record not yet matched with the same exit, the same vCPU, the same page (where the event
    /// names one) and a time within `windowNs`. Looks at the newest 4096 records. Returns the events no record
    /// matched (the VMM's record may still be on its way: the caller retries them for a while).
    ///
    /// Each event costs a hash lookup, a binary search and at most `CorroborationIndex.probes` candidates, whatever
    /// the stream's rate (a scan of the newest records for every event froze the inspector at 100,000 faults/s).
    public mutating func corroborate(_ events: [TracedExit], windowNs: UInt64 = 20_000_000) -> [TracedExit] {
        var unmatched: [TracedExit] = []
        if !indexingUntraced {
            indexingUntraced = true
            untraced = CorroborationIndex()
            indexRange(faultBase)
        }
        let lowest = faultBase &+ UInt64(max(0, faults.count - 4096))
        for e in events {
            let key = CorroborationIndex.Key(vcpu: e.vcpu, exit: e.exit.rawValue, page: e.gpa.map { $0 >> 12 })
            guard let positions = untraced.lists[key], !positions.isEmpty else { unmatched.append(e); continue }
            let newestAdmitted = e.timeNs.addingReportingOverflow(windowNs).overflow ? UInt64.max : e.timeNs + windowNs
            // The last position whose record is no newer than the window admits (a vCPU's records are in time order).
            var lo = 0, hi = positions.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if positions[mid].timeNs <= newestAdmitted { lo = mid + 1 } else { hi = mid }
            }
            var found: Int?
            var i = lo - 1, probes = 0
            while i >= 0 && probes < CorroborationIndex.probes && positions[i].position >= lowest {
                defer { i -= 1 }
                probes += 1
                let t = positions[i].timeNs
                let dt = t > e.timeNs ? t - e.timeNs : e.timeNs - t
                if t < e.timeNs && dt > windowNs { break }
                guard dt <= windowNs, !isTraced(positions[i].position) else { continue }
                found = i
                break
            }
            if let found {
                let position = positions[found].position
                faults[Int(position - faultBase)].tracedNs = e.timeNs
                untraced.lists[key]?.remove(at: found)
                untraced.entries -= 1
                faultsTraced += 1
            } else {
                unmatched.append(e)
            }
        }
        return unmatched
    }

    /// Puts a conversion the trace timed onto the memory-fault row of the exit that asked for it (the trace's own row,
    /// or the VMM's row the trace corroborated): the row of `vcpu` whose exit was traced at `exitNs`, among the newest
    /// 4096. False while there is none (the VMM's record comes over its socket after the trace saw the exit).
    public mutating func attach(conversionSteps steps: [ConversionStep: UInt64], memoryFaultExitNs exitNs: UInt64, vcpu: Int?) -> Bool {
        var i = faults.count - 1
        while i >= max(0, faults.count - 4096) {
            let f = faults[i]
            if f.exit == .memoryFault && f.vcpu == vcpu && (f.source == .trace ? f.timeNs : f.tracedNs) == exitNs {
                if conversionSteps.count >= 4096, let oldest = faults.first?.seq {
                    conversionSteps = conversionSteps.filter { $0.key >= oldest }
                    if conversionSteps.count >= 4096 { conversionSteps.removeAll() }
                }
                conversionSteps[f.seq] = steps
                return true
            }
            i -= 1
        }
        return false
    }

    /// Whether the record at absolute position `p` (`faultBase` + its index) is gone or already corroborated.
    private func isTraced(_ p: UInt64) -> Bool {
        guard p >= faultBase, p - faultBase < UInt64(faults.count) else { return true }
        return faults[Int(p - faultBase)].tracedNs != nil
    }

    /// Indexes the records at positions `from...` that a traced event may corroborate (not the trace's own); rebuilt
    /// from the kept records once the index passes 3 × `faultCapacity` entries (two a record: by page and by vCPU), so
    /// it stays within that. A rebuild leaves at most 2 × `faultCapacity`, so the next comes `faultCapacity` / 2 records
    /// later at the soonest: a record costs a bounded amount of indexing on average. (The bound was 2 × `faultCapacity`
    /// + 8192, which a rebuild itself nearly reached: under a stream every 4,096 records rebuilt the index of all
    /// 100,000 kept, and the decode benchmark fell from 2.1 million records/s to 0.1 million.)
    private mutating func indexUntraced(from: UInt64) {
        guard indexingUntraced else { return }
        if untraced.entries > 3 * faultCapacity {
            untraced = CorroborationIndex(rebuilds: untraced.rebuilds + 1)
            indexRange(faultBase)
        } else {
            indexRange(from)
        }
    }

    private mutating func indexRange(_ from: UInt64) {
        var p = max(from, faultBase)
        let end = faultBase + UInt64(faults.count)
        while p < end {
            let f = faults[Int(p - faultBase)]
            if f.source != .trace && f.tracedNs == nil {
                let entry = CorroborationIndex.Entry(position: p, timeNs: f.timeNs)
                untraced.lists[.init(vcpu: f.vcpu, exit: f.exit.rawValue, page: f.gpa >> 12), default: []].append(entry)
                untraced.lists[.init(vcpu: f.vcpu, exit: f.exit.rawValue, page: nil), default: []].append(entry)
                untraced.entries += 2
            }
            p += 1
        }
    }

    /// Keeps the newest `faultCapacity` of the buffer and `records`, trimmed and filled in bulk.
    private mutating func store(_ records: [FaultRecord]) {
        let keep = min(records.count, faultCapacity)
        let overflow = faults.count + keep - faultCapacity
        if overflow > 0 { faults.removeFirst(overflow); faultBase += UInt64(overflow) }
        let first = faultBase + UInt64(faults.count)
        faults.append(contentsOf: records[(records.count - keep)...])
        faultsReceived += UInt64(records.count)
        if var told = story {
            for f in records { told.note(f, gfn: canonicalGFN(f)) }
            story = told
        }
        indexUntraced(from: first)
    }

    public mutating func apply(event e: JSON, nowNs: UInt64) {
        if let event = Event(message: e) { apply(event: event, nowNs: nowNs) }
    }

    public mutating func apply(event e: Event, nowNs: UInt64) {
        if case .memoryFault(let batch) = e {
            apply(faults: batch, nowNs: nowNs)
            return
        }
        countEvent(nowNs: nowNs)
        let layout = e.changesLayout
        if layout.memslots { memslotsStale = true }
        if layout.attributes { attributesStale = true }
        switch e {
        case .memslotsChanged(let generation):
            memslotGeneration = generation ?? memslotGeneration
        case .eventsDropped(let count, _):
            eventsDropped = eventsDropped.saturatingAdd(count)
        case .memoryAttributesChanged(let gpa, let size, let isPrivate, let cause, _):
            let mask = aliasMask
            story?.note(attributesChanged: gpa, size: size, isPrivate: isPrivate, cause: cause, aliasMask: mask)
        case .guestReport(_, let kind?, let value):
            let old = guestReports[kind] ?? (0, 0)
            guestReports[kind] = (old.count + 1, value)
        case .vcpuStateChanged(let i?, let s?, _):
            if let k = vcpus.firstIndex(where: { $0.index == i }) { vcpus[k].state = s }
        default:
            break
        }
    }

    /// The shared-alias mask of the VM (0 when it has none).
    public var aliasMask: UInt64 { vm.sharedAliasBit.flatMap { (0..<64).contains($0) ? UInt64(1) << UInt64($0) : nil } ?? 0 }

    /// The RAM page a fault names: an access through the shared alias names the page without the alias bit.
    public func canonicalGFN(_ f: FaultRecord) -> UInt64 { (f.gpa & ~aliasMask) / 4096 }

    public mutating func append(fault f: FaultRecord, nowNs: UInt64) {
        if faults.count >= faultCapacity { faults.removeFirst(); faultBase += 1 }
        faults.append(f)
        faultsReceived += 1
        if story != nil { let gfn = canonicalGFN(f); story?.note(f, gfn: gfn) }
        indexUntraced(from: faultBase + UInt64(faults.count - 1))
        recentFaults.append(gfn: canonicalGFN(f), at: nowNs)
        countFaults(1, nowNs: nowNs)
    }

    /// Records from before the session (a snapshot's): kept and marked at their own time, not counted as arrivals.
    mutating func appendHistory(_ records: [FaultRecord]) {
        store(records)
        for f in records { recentFaults.append(gfn: canonicalGFN(f), at: f.timeNs) }
    }

    private mutating func countFaults(_ n: Int, nowNs: UInt64) {
        let second = nowNs / 1_000_000_000
        if second != faultRateSecond {
            let shift = Int(min(second &- faultRateSecond, 60))
            faultRate.removeFirst(shift)
            faultRate.append(contentsOf: Array(repeating: 0, count: shift))
            faultRateSecond = second
        }
        faultRate[faultRate.count - 1] += n
    }

    /// The faults as the view keeps them (at most `faultCapacity`, newest last).
    public var visibleFaults: FaultLog { faults }
}
