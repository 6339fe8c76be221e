import Foundation
import HostTracing
import KVM
import Schema

/// What the kernel's KVM tracepoints show of any VM, with no help from its VMM: a `VMSource` over HostTracing's session. Its fault rows
/// are MMIO accesses and page faults as KVM traced them (`source: trace`); its vCPUs are the process's vCPU threads
/// with their exits to userspace counted by reason. It cannot act on the VM, and says so.
public final class TraceSource: VMSource {
    public let session: TraceSession
    private var seq: UInt64 = 0
    private var vcpuOfThread: [Int32: Int] = [:]
    private var exitCounts: [Int32: [String: UInt64]] = [:]
    private var lastExit: [Int32: String] = [:]
    private var lastVCPURefresh: UInt64 = 0
    private var started = false

    /// Feeds only the fault stream (beside another source that has the VM, its memslots and vCPUs).
    public let faultsOnly: Bool
    /// Beside a VMM that reports its own faults: no rows of its own; each `kvm_mmio` (and memory-fault
    /// `kvm_userspace_exit`) marks the VMM's record of the same exit instead, so one row shows both sources.
    public let corroborating: Bool
    /// Events waiting for the VMM's record of the same exit (it comes over the socket, a few ms later).
    private var pending: [TracedExit] = []
    /// Events no VMM record matched within `pendingNs` (MMIO to devices, not faults); counted, not shown.
    public private(set) var unmatched: UInt64 = 0
    static let pendingNs: UInt64 = 500_000_000
    static let pendingLimit = 65_536
    static let retryLimit = 8192
    static let readLimit = 16_384
    private var pacer = TracePacer()
    private var nextReadNs: UInt64 = 0
    /// `model.faultsReceived` when the pending events were last tried, and how many of them were.
    private var receivedAtLastTry: UInt64 = .max
    private var triedCount = 0
    /// The VM's private/shared map from `kvm_vm_set_mem_attributes` and the ioctls' results, where the kernel has
    /// that tracepoint (Linux 6.17 and later with memory attributes); nil elsewhere (`attributesUnavailable` says why).
    public var attributes: TracedAttributes? { pairing.attributes }
    /// What `vmscope trace --paired-only` pairs, the same way: the map, conversions' steps
    /// (`ConversionLatencyPairing`), the guest's `KVM_HC_MAP_GPA_RANGE` requests (pending until its vCPU thread goes
    /// back in), and memory faults: a `kvm_page_fault` then a MEMORY_FAULT exit on the same thread. Exits with no page
    /// fault before them (the trace began between the two, or the kernel does not fire kvm_page_fault, as under PVM)
    /// are counted, not given a GPA.
    private var pairing: TracePairing
    public let attributesUnavailable: String?
    private var lastRefusal: String?
    private var notice: (text: String, isError: Bool)?
    /// Beside vmscope's own VMM on the kernel engine: its map against the traced one (`MapAgreement`).
    public private(set) var agreement = MapAgreement()
    private var lastAgreementCheck: UInt64 = 0
    private var recentConversions = RecentConversions()
    /// `session.missed` when the traced map last took it into account.
    private var missedSeen: UInt64 = 0
    /// Conversions' steps that wait for their memory-fault row (beside a VMM, its record comes over the socket after
    /// the trace saw the exit): tried each poll for 2 s, at most `timingLimit` of them.
    private var unattached: [(steps: [ConversionStep: UInt64], exitNs: UInt64, vcpu: Int?)] = []
    private var rowsAtLastAttach: (UInt64, UInt64) = (0, 0)
    static let timingLimit = 1024
    static let timingWaitNs: UInt64 = 2_000_000_000

    /// With `faultsOnly`: the traced private/shared map too (a stock QEMU, which has none of its own to show).
    public let mapsBeside: Bool

    public init(session: TraceSession, faultsOnly: Bool = false, corroborating: Bool = false, mapsBeside: Bool = false) {
        self.session = session
        self.faultsOnly = faultsOnly || corroborating
        self.corroborating = corroborating
        self.mapsBeside = mapsBeside && !corroborating
        let traces = TracePairing.tracesConversions(session.layouts)
        if traces {
            attributesUnavailable = nil
        } else if session.layouts.events["kvm_vm_set_mem_attributes"] != nil {
            attributesUnavailable = "this kernel traces KVM_SET_MEMORY_ATTRIBUTES but not system calls (CONFIG_FTRACE_SYSCALLS), so no conversion's result is known: private/shared map unavailable"
        } else {
            attributesUnavailable = "this kernel has no kvm_vm_set_mem_attributes tracepoint (Linux 6.17 and later with memory attributes have it): private/shared map unavailable"
        }
        // Complete when the process had no VM once tracing was on: every VM it makes is traced from birth. What the
        // guest's requests led to is known where conversions are.
        pairing = TracePairing(tracesConversions: traces, complete: traces && !HostProcess.hasVM(pid: session.pid))
    }

    private func threadName(_ tid: Int32) -> String {
        readPseudoFile("/proc/\(session.pid)/task/\(tid)/comm") ?? ""
    }

    private func vcpu(_ tid: Int32) -> Int? {
        if let v = vcpuOfThread[tid] { return v }
        let v = HostProcess.vcpuIndex(threadName: threadName(tid))
        if let v { vcpuOfThread[tid] = v }
        return v
    }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        var changed = false
        if !started && !faultsOnly {
            started = true
            var vm = VMInfo()
            vm.name = HostProcess.name(pid: session.pid)
            vm.pid = Int(session.pid)
            vm.engine = "-"
            vm.policy = "-"
            model.vm = vm
            model.connection = .connected("kernel tracepoints (\(session.name))")
            model.unavailable = [
                .memslots: "trace only: memslots live in the VMM (KVM_SET_USER_MEMORY_REGION2 has no tracepoint); attach to its control socket to see them",
            ]
            if let a = attributes {
                model.heatMapNote = nil
                model.tracedMap = .init(unknown: a.complete ? [] : [0..<1], pages: 1, applied: 0, refused: 0, lastRefusal: nil, complete: a.complete)
            } else {
                model.heatMapNote = "trace only: \(attributesUnavailable ?? ""); nor does any tracepoint say where RAM is; cells show KVM's traced MMIO and page faults"
            }
            changed = true
        }
        // Bounded a poll (the rest waits in the kernel's buffer, whose overflow is counted as missed): a poll never
        // takes the worker away for long, however fast the VM exits. Paced (`TracePacer`): the worker polls every
        // 20 ms, and a read that often is CPU taken from the VM where CPUs are few.
        var events: [TraceEvent] = []
        if nowNs >= nextReadNs {
            events = session.read(limit: Self.readLimit)
            nextReadNs = nowNs + pacer.next(afterReading: events.count)
        }
        forgetIfEventsWereLost(&model)
        if corroborating { return corroborate(events, &model, nowNs: nowNs) }
        var records: [FaultRecord] = []
        var mapChanged = false
        var requestsChanged = false
        var timings: [ConversionTiming] = []
        var paired: [TracePairing.Paired] = []
        for e in events {
            let v = vcpu(e.tid)
            let pendingBefore = pairing.requests.pending.count
            paired.removeAll(keepingCapacity: true)
            pairing.apply(e, into: &paired)
            if pairing.requests.pending.count != pendingBefore { requestsChanged = true }
            for p in paired {
                switch p {
                case .request(let r):
                    requestsChanged = true
                    if r.outcome != .converted && r.outcome != .forwarded {
                        notice = ("the guest's KVM_HC_MAP_GPA_RANGE \(r.rangeWords): \(r.outcome.words)", false)
                    }
                case .steps(let t):
                    timings.append(t)
                case .conversion, .fault:
                    break
                }
            }
            for p in paired {
                switch p {
                case .conversion(let c):
                    mapChanged = true
                    if let why = c.refusalText {
                        lastRefusal = why
                        // The status line says each as it comes (the map's note has room for the count).
                        notice = ("KVM refused a traced conversion: \(why)", false)
                    }
                case .fault(let f):
                    guard let gpa = f.gpa else { continue }
                    seq += 1
                    let code = f.errorCode ?? PageFaultErrorCode(rawValue: 0)
                    let access: FaultAccess = code.has("fetch") ? .exec : code.has("write") ? .write : .read
                    var r = FaultRecord(seq: seq, timeNs: e.timeNs, vcpu: v, gpa: gpa & ~0xFFF, size: 4096,
                                        flags: f.wantsPrivate == true ? MemoryAttributes.private.rawValue : 0, isPrivate: f.wantsPrivate == true,
                                        access: access, source: .trace, exit: .memoryFault, attribute: .none, slot: nil, action: .reported)
                    r.attribute = f.pageIsPrivate.map { Open<PageAttribute>($0 ? .private : .shared) }
                        ?? .unknown(f.wantsPrivate == nil ? "not traced: direction unknown" : "not traced")
                    records.append(r)
                case .steps, .request:
                    break
                }
            }
            switch e.kind {
            case .userspaceExit(let reason, let errno):
                // KVM_RUN returns -EFAULT with a MEMORY_FAULT exit by design: that is the exit, not a failed run.
                let name = errno < 0 && reason != .memoryFault ? HostVMs.Stat.errorReason : reason.name
                exitCounts[e.tid, default: [:]][name, default: 0] += 1
                lastExit[e.tid] = name
            case .mmio(let type, let len, let gpa, _):
                seq += 1
                let access: FaultAccess = switch type { case .write: .write; case .read, .unsatisfiedRead: .read; case .unknown: .unknown }
                var r = FaultRecord(seq: seq, timeNs: e.timeNs, vcpu: v, gpa: gpa, size: UInt64(len), flags: 0, isPrivate: false,
                                    access: access, source: .trace, exit: .mmio, attribute: .none, slot: nil, action: .reported)
                r.attribute = .unknown("?")
                records.append(r)
            case .pageFault(_, _, let address, let ec):
                seq += 1
                let access: FaultAccess = ec.has("fetch") ? .exec : ec.has("write") ? .write : .read
                var r = FaultRecord(seq: seq, timeNs: e.timeNs, vcpu: v, gpa: address, size: 4096, flags: ec.rawValue,
                                    isPrivate: ec.has("private_access"), access: access, source: .trace, exit: .pageFault,
                                    attribute: .none, slot: nil, action: .reported)
                r.attribute = .unknown("?")
                records.append(r)
            case .hypercall, .exit, .other, .setMemoryAttributes, .ioctlEnter, .ioctlExit, .kernelPairedFault:
                break
            }
        }
        if !records.isEmpty {
            model.apply(faults: FaultBatch(records: records, dropped: 0), nowNs: nowNs)
            changed = true
        }
        if timeConversions(timings, &model, nowNs: nowNs) { changed = true }
        if let a = attributes, !faultsOnly || mapsBeside, mapChanged || requestsChanged || model.tracedMap == nil {
            publish(a, &model)
            changed = true
        }
        if session.missed > model.eventsDropped { model.eventsDropped = session.missed; changed = true }
        if faultsOnly { return changed }
        if nowNs &- lastVCPURefresh >= 1_000_000_000 || lastVCPURefresh == 0 {
            let interval = lastVCPURefresh == 0 ? 1 : nowNs &- lastVCPURefresh
            lastVCPURefresh = nowNs
            var rows: [VCPURow] = []
            // Threads that exit to userspace from KVM_RUN are vCPU threads; one whose name does not say its index (QEMU
            // without -name debug-threads=on) is numbered after the named ones, in thread-id order.
            var next = (vcpuOfThread.values.max() ?? -1) + 1
            for tid in exitCounts.keys.sorted() where vcpu(tid) == nil {
                vcpuOfThread[tid] = next
                next += 1
            }
            for tid in session.threads.sorted() {
                guard let index = vcpu(tid), exitCounts[tid] != nil || HostProcess.vcpuIndex(threadName: threadName(tid)) != nil else { continue }
                let counts = (exitCounts[tid] ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
                var row = VCPURow(index: index, threadID: Int(tid), state: .unknown("traced"), lastExit: lastExit[tid] ?? "-",
                                  exitCounts: counts)
                row.exitTotal = counts.reduce(0) { $0 &+ $1.1 }
                rows.append(row)
            }
            rows.sort { $0.index < $1.index }
            model.apply(vcpus: rows, intervalNs: interval)
            model.vm.vcpus = rows.count
            changed = true
        }
        if kill(session.pid, 0) != 0 && errno == ESRCH {
            model.connection = .disconnected("process \(session.pid) exited")
        }
        return changed
    }

    /// The traced map as the model's runs (known pages) and its unknown ranges, over the pages conversions and faults
    /// reached (a trace does not know where RAM ends).
    private func publish(_ a: TracedAttributes, _ model: inout InspectorModel) {
        var top = max(1, a.extent)
        if let g = model.recentFaults.highestGFN { top = max(top, g.saturatingAdd(1)) }
        let v = a.view(start: 0, end: top)
        model.apply(attributes: AttributeRuns(runs: v.known.map { AttributeRun(gpa: $0.start << 12, size: ($0.end - $0.start) << 12, isPrivate: $0.isPrivate) },
                                              privateBytes: v.known.filter(\.isPrivate).reduce(0) { $0 &+ ($1.end - $1.start) << 12 },
                                              sharedBytes: v.known.filter { !$0.isPrivate }.reduce(0) { $0 &+ ($1.end - $1.start) << 12 }))
        var t = InspectorModel.TracedMapState(unknown: v.unknown, pages: top, applied: a.applied, refused: a.refused, lastRefusal: lastRefusal, complete: a.complete)
        t.pendingRequests = pairing.requests.pendingRequests.map { .init(gfns: $0.gfns, toPrivate: $0.range.toPrivate, requestedNs: $0.requestedNs) }
        t.answeredRequests = GuestRequestTracker.Request.Outcome.allCases.compactMap { o in pairing.requests.ended[o].map { .init(o.words, $0) } }
        model.tracedMap = t
    }

    /// The events as marks on the VMM's own records (see `corroborating`).
    private func corroborate(_ events: [TraceEvent], _ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        var alarmChanged = false
        if pairing.tracesConversions {
            var timings: [ConversionTiming] = []
            var paired: [TracePairing.Paired] = []
            for e in events {
                paired.removeAll(keepingCapacity: true)
                pairing.apply(e, into: &paired)
                for p in paired {
                    if case .steps(let t) = p { timings.append(t) }
                    if case .conversion(let c) = p, c.accepted, let start = c.startGFN, let end = c.endGFN, start < end {
                        recentConversions.add(start..<end, atNs: e.timeNs)
                    }
                }
            }
            alarmChanged = checkAgreement(&model, nowNs: nowNs)
            if timeConversions(timings, &model, nowNs: nowNs) { alarmChanged = true }
        }
        for e in events {
            switch e.kind {
            case .mmio(_, _, let gpa, _):
                pending.append(TracedExit(timeNs: e.timeNs, vcpu: vcpu(e.tid), gpa: gpa, exit: .mmio))
            case .userspaceExit(let reason, _) where reason == .memoryFault:
                pending.append(TracedExit(timeNs: e.timeNs, vcpu: vcpu(e.tid), gpa: nil, exit: .memoryFault))
            default:
                break
            }
        }
        guard !pending.isEmpty else { return alarmChanged }
        let before = model.faultsTraced
        // Events already tried can only match records that arrived since: without new records only the new events
        // are tried. The events waiting are bounded (the oldest beyond `pendingLimit` are counted as unmatched).
        let retry = model.faultsReceived != receivedAtLastTry
        receivedAtLastTry = model.faultsReceived
        // At most `retryLimit` of the older ones again a pass, the newest (older ones have had their chances).
        let tried = retry ? pending[max(0, triedCount - Self.retryLimit)...] : pending[triedCount...]
        let left = Array(pending[..<tried.startIndex]) + model.corroborate(Array(tried))
        let fresh = left.filter { $0.timeNs &+ Self.pendingNs >= nowNs }
        pending = Array(fresh.suffix(Self.pendingLimit))
        triedCount = pending.count
        unmatched &+= UInt64(left.count - pending.count)
        return model.faultsTraced != before || alarmChanged
    }

    /// Where the kernel dropped events since the last poll, the traced map cannot be exact any more: it forgets what it
    /// knew (pages become unknown until converted again), the comparison with the VMM's map starts over, and the
    /// status line says so, rather than a dropped conversion showing as a page that disagrees.
    private func forgetIfEventsWereLost(_ model: inout InspectorModel) {
        let lost = session.missedSince(&missedSeen)
        guard lost > 0, pairing.tracesConversions else { return }
        _ = pairing.forget()
        if let a = attributes, !faultsOnly || mapsBeside { publish(a, &model) }
        agreement = MapAgreement()
        if model.mapAlarm != nil { model.mapAlarm = nil }
        notice = ("the kernel dropped \(lost) trace events: the traced map forgets what it knew (pages are unknown until converted again)", false)
    }

    /// The timed conversions into the histogram, and onto the rows of the memory faults that asked for them (now, or
    /// in a later poll once the VMM's record is there).
    private func timeConversions(_ timings: [ConversionTiming], _ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        for t in timings {
            let steps = t.steps
            guard !steps.isEmpty else { continue }
            model.conversionLatency.add(steps)
            if t.exitReason == .memoryFault, let exitNs = t.exitNs { unattached.append((steps, exitNs, vcpu(t.conversion.tid))) }
        }
        // Rows come with new records or new corroborations only: without either, nothing waiting can attach now.
        let rows = (model.faultsReceived, model.faultsTraced)
        guard !unattached.isEmpty, timings.contains(where: { $0.exitReason == .memoryFault }) || rows != rowsAtLastAttach
        else { return !timings.isEmpty }
        rowsAtLastAttach = rows
        unattached = unattached.filter { u in
            !model.attach(conversionSteps: u.steps, memoryFaultExitNs: u.exitNs, vcpu: u.vcpu) && u.exitNs &+ Self.timingWaitNs >= nowNs
        }.suffix(Self.timingLimit)
        return true
    }

    /// Four times a second, where the VMM runs the kernel engine and its map is current: the pages where it and
    /// the traced map disagree; the alarm once one has for `MapAgreement.graceNs`.
    private func checkAgreement(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        guard let a = attributes, nowNs &- lastAgreementCheck >= 250_000_000 else { return false }
        lastAgreementCheck = nowNs
        guard model.vm.engine == AttributeEngineKind.kernel.rawValue, !model.attributesStale, let bit = model.vm.sharedAliasBit,
              (12..<64).contains(bit), model.vm.ramSize > 0 else { return false }
        let aliasGFN = (UInt64(1) << UInt64(bit)) >> 12, pages = model.vm.ramSize / 4096
        let known = a.view(start: aliasGFN, end: aliasGFN.saturatingAdd(pages)).known
        let (differ, compared) = MapAgreement.disagreements(traced: known, vmm: model.runs, aliasGFN: aliasGFN, pages: pages)
        recentConversions.forget(before: nowNs &- min(nowNs, agreement.graceNs))
        let alarm = agreement.check(recentConversions.excluding(differ, aliasGFN: aliasGFN), compared: compared, nowNs: nowNs)
        guard alarm != model.mapAlarm else { return false }
        model.mapAlarm = alarm
        return true
    }

    public func takeNotice() -> (text: String, isError: Bool)? {
        defer { notice = nil }
        return notice
    }

    public func refusal(_ action: InspectorAction) -> String? {
        "a trace-only view cannot act on the VM: tracepoints only watch (attach to the VMM's control socket to act)"
    }

    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        throw SourceRefusal(refusal(action) ?? "")
    }

    public var recordingSocket: Result<String, SourceRefusal> {
        .failure(SourceRefusal("a trace-only view has no control socket to record; vmscope trace PID --json writes the events"))
    }
}

/// A source whose peer is a process on this host (a control socket's, by its peer credentials; a libvirt domain's
/// QEMU, by libvirt's pid file), which KVM's tracepoints can watch beside it.
public protocol TracedPeer: VMSource {
    var isConnected: Bool { get }
    var peerPID: Int? { get }
    /// A stock QEMU, which has no fault stream of its own (the trace's rows are the faults pane).
    var isQEMU: Bool { get }
    func close()
}

extension SocketSource: TracedPeer {}

/// A control socket with KVM's tracepoints beside it: the socket's source for everything it offers, and, when the
/// peer is a stock QEMU (which has no fault stream over QMP), the trace source for the faults pane, on QEMU's pid
/// from the socket's peer credentials. Where tracing cannot start, the pane keeps its reason and says why not.
public final class TracedSocketSource: VMSource {
    public let socket: any TracedPeer
    public private(set) var trace: TraceSource?
    private var tracedPid: Int?
    private var notice: (text: String, isError: Bool)?

    public init(socket: any TracedPeer) { self.socket = socket }

    public func poll(_ model: inout InspectorModel, nowNs: UInt64) -> Bool {
        var changed = socket.poll(&model, nowNs: nowNs)
        // The kernel's word for who is at the other end (a peer could name any process, or a number no pid is).
        guard socket.isConnected, let pid = socket.peerPID, pid > 0, pid <= Int(Int32.max) else { return changed }
        if tracedPid != pid {
            // A first attach, or the VMM restarted: trace the process now at the other end. QEMU's faults pane is the
            // trace's rows; vmscope's VMM has its own fault stream, which the trace corroborates row by row.
            trace?.session.close()
            trace = nil
            tracedPid = pid
            do {
                // The conversions' results paired in the kernel where it can: every KVM_RUN's return is not read.
                let session = try TraceSession(pid: Int32(pid), pairInKernel: .ioctlResults)
                trace = socket.isQEMU ? TraceSource(session: session, faultsOnly: true, mapsBeside: true)
                    : TraceSource(session: session, corroborating: true)
            } catch {
                if socket.isQEMU {
                    model.unavailable[.faults] = (model.unavailable[.faults].map { $0 + "; " } ?? "") + "kernel tracepoints unavailable: \(error)"
                } else {
                    // vmscope's VMM: its own records stand alone (rows show one source); the status line says why
                    // the kernel's tracepoints do not corroborate them (libtracefs missing, not root), once, short
                    // enough that the packages to install fit in 80 columns.
                    notice = ("no kernel cross-check: \(error)", false)
                }
            }
            changed = true
        }
        if let trace, socket.isQEMU, model.unavailable[.faults] != nil || model.unavailable[.map] != nil || (trace.attributes != nil && model.heatMapNote != nil) {
            // Traced (after a first attach, or a reconnection, which brings QEMU's reasons back): the faults pane is
            // the trace's rows. The map, which QEMU gives no attributes for, is the private/shared map KVM's
            // tracepoints keep where the kernel has them (7.3), else the heat of those rows over QEMU's KVM-mapped
            // ranges, with QEMU's reason above it.
            model.unavailable[.faults] = nil
            let why = model.unavailable.removeValue(forKey: .map)
            if trace.attributes != nil { model.heatMapNote = nil } else if let why { model.heatMapNote = why }
            changed = true
        }
        if let trace, trace.poll(&model, nowNs: nowNs) { changed = true }
        return changed
    }

    public func refusal(_ action: InspectorAction) -> String? { socket.refusal(action) }
    public func perform(_ action: InspectorAction, model: inout InspectorModel) throws -> ActionOutcome {
        try socket.perform(action, model: &model)
    }
    public func takeNotice() -> (text: String, isError: Bool)? {
        if let n = socket.takeNotice() { return n }
        defer { notice = nil }
        return notice
    }
    public var recordingSocket: Result<String, SourceRefusal> { socket.recordingSocket }
    public var recordedFromModel: (socket: String, greeting: JSON)? { socket.recordedFromModel }

    public func close() { trace?.session.close() }
}
