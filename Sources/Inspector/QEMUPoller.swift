import ControlProtocol

/// Keeps an `InspectorModel` fed from a stock QEMU's QMP, with no agent in the guest or beside QEMU: what to poll, how
/// often, and what an action becomes. Not a `VMSource` itself: `QEMUMonitorSource` (QEMU's socket) and `LibvirtSource`
/// (libvirt's monitor passthrough) run it over their transport. (It was `QEMUSource`, a name that said otherwise.)
///
/// QEMU sends events for run-state changes only, so the rest is polled, at rates chosen by what each command
/// costs QEMU (measured on QEMU 7.2 with 3 vCPUs: `query-status` 0.5 ms of its CPU, `info registers -a` and
/// `query-stats` for the vCPUs 2 ms each, growing with the vCPU count):
/// - every second, the run state; while the VM runs, also the registers (`info registers -a`, which briefly
///   stops each vCPU) and the vCPUs' KVM statistics;
/// - every five seconds, the CPU list (`query-cpus-fast`), the memory map (`info mtree -f`) and its memory
///   devices, VM-wide statistics, and the registers and statistics of a paused VM (they only move when it runs).
/// Each of the two polls is spaced further apart when it takes longer than `budget` of the time between them
/// (a VM with many vCPUs): the time a poll waits for its replies bounds what QEMU spent on it (its main loop
/// answers one command at a time). An event that says something changed makes the next poll come at once.
/// `vmscope-bench --only qemu-poll` measures QEMU's CPU with and without the inspector, paused and running.
public struct QEMUPoller: Sendable {
    /// Why vmscope's own recorder (`Recorder`, a client of its own asking `query-snapshot`) does not take a stock
    /// QEMU, and what records it instead (`ModelRecorder`).
    public static let recorderRefusal = "a stock QEMU, which has no query-snapshot and serves one client per monitor: "
        + "it is recorded from what the inspector sees of it (R while attached, or vmscope record SOCKET)"

    /// Sends one command and returns its `return` value; a refusal or a broken connection throws.
    public typealias Execute = (String, JSON?) throws -> JSON

    public var fastIntervalNs: UInt64 = 1_000_000_000
    public var slowIntervalNs: UInt64 = 5_000_000_000
    /// The share of one core that each poll may cost QEMU, as time waited for its replies over the time
    /// between two of them.
    public var budget = 0.006
    /// Reads the time a poll takes (replaceable in tests).
    public var clock: @Sendable () -> UInt64 = HostClock.monotonicNs
    /// The spacing in force: `fastIntervalNs`/`slowIntervalNs`, or longer where a poll costs more than `budget`.
    public private(set) var fastSpacingNs: UInt64 = 1_000_000_000
    public private(set) var slowSpacingNs: UInt64 = 5_000_000_000
    public private(set) var version: (major: Int, minor: Int, micro: Int)
    public private(set) var versionText: String
    /// The confidential-guest object's type when QEMU backs RAM with guest_memfd (SEV-SNP, TDX; QEMU 9.1+).
    public private(set) var guestMemfdGuest: String?
    private var lastFastPoll: UInt64 = 0
    private var lastSlowPoll: UInt64 = 0
    private var lastVCPURefresh: UInt64 = 0
    /// `query-cpus-fast` as last read.
    private var cpuList: [QEMUQMP.CPU] = []

    /// From the greeting's `QMP.version.qemu`.
    public init(greeting: JSON) {
        let v = QEMUQMP.Version(greeting: greeting)
        version = (v.major, v.minor, v.micro)
        versionText = "QEMU \(version.major).\(version.minor).\(version.micro)"
    }

    /// Whether this QEMU can back RAM with guest_memfd at all (9.1 added it, for SEV-SNP; TDX followed).
    public var canUseGuestMemfd: Bool { version.major > 9 || (version.major == 9 && version.minor >= 1) }

    /// What the views cannot show on this QEMU, and why.
    public var unavailableViews: [Pane: String] {
        let map = if let g = guestMemfdGuest {
            "\(versionText): RAM is guest_memfd-backed (confidential guest \(g)), but QEMU reports no per-page private/shared state over QMP; private/shared map unavailable"
        } else if canUseGuestMemfd {
            "\(versionText): no confidential guest, so no guest_memfd: every page is ordinary shared memory; private/shared map unavailable"
        } else {
            "\(versionText): no guest_memfd (QEMU added it in 9.1); private/shared map unavailable"
        }
        let faults = canUseGuestMemfd
            ? "\(versionText) handles KVM_EXIT_MEMORY_FAULT itself and sends no QMP event for it; fault stream unavailable"
            : "\(versionText) predates KVM_EXIT_MEMORY_FAULT handling and has no QMP event for memory faults; fault stream unavailable"
        return [.map: map, .faults: faults]
    }

    /// Everything once, right after connecting. `pid` is QEMU's, from the socket's peer credentials (QMP has none).
    public mutating func start(_ execute: Execute, model: inout InspectorModel, nowNs: UInt64, pid: Int? = nil) throws {
        var vm = VMInfo()
        vm.qemuVersion = versionText
        vm.pid = pid
        let name = QEMUQMP.name(try execute(QEMUQMP.Command.queryName.rawValue, nil))
        vm.name = name.isEmpty ? "(no -name)" : name
        let kvm = QEMUQMP.KVMState(json: try execute(QEMUQMP.Command.queryKVM.rawValue, nil))
        vm.accelerator = kvm.enabled ? "kvm" : (kvm.present ? "tcg (KVM present, not used)" : "tcg")
        vm.arch = (try? execute(QEMUQMP.Command.queryTarget.rawValue, nil)).flatMap(QEMUQMP.arch)
        vm.machine = Self.machineType(execute)
        vm.engine = "none"
        vm.policy = "-"
        // What this QEMU allows: no conversions (no KVM_SET_MEMORY_ATTRIBUTES over QMP), so no mutations;
        // stop/cont and inject-nmi are QMP's to anyone with the socket, which the inspector asks about first
        // (a VM vmscope did not start) unless `attach --allow-control`.
        vm.mutationsAllowed = false
        vm.faultInjectionAllowed = true
        model.offeredInjections = [.nmi]
        model.vm = vm
        if canUseGuestMemfd,
           let cgs = try? execute(QEMUQMP.Command.qomGet.rawValue, QEMUQMP.qomGet(path: QEMUQMP.machinePath, property: QEMUQMP.confidentialGuestProperty)).stringValue,
           !cgs.isEmpty, let type = try? execute(QEMUQMP.Command.qomGet.rawValue, QEMUQMP.qomGet(path: cgs, property: QEMUQMP.typeProperty)).stringValue,
           QEMUQMP.guestMemfdGuestTypes.contains(type) {
            guestMemfdGuest = type
        }
        model.unavailable = unavailableViews
        if !kvm.enabled {
            model.unavailable[.memslots] = "\(versionText) runs TCG, not KVM (query-kvm): it has no KVM memslots"
        }
        model.runs = []
        refreshSoon()
        try poll(execute, model: &model, nowNs: nowNs)
    }

    /// The machine type QEMU runs (`qom-get /machine type` is `pc-q35-7.2-machine`), with the alias
    /// `query-machines` gives it (`q35`); nil when this QEMU answers neither.
    static func machineType(_ execute: Execute) -> String? {
        guard let type = (try? execute(QEMUQMP.Command.qomGet.rawValue, QEMUQMP.qomGet(path: QEMUQMP.machinePath, property: QEMUQMP.typeProperty)))?.stringValue,
              !type.isEmpty else { return nil }
        let name = type.hasSuffix("-machine") ? String(type.dropLast("-machine".count)) : type
        let alias = (try? execute(QEMUQMP.Command.queryMachines.rawValue, nil)).flatMap { QEMUQMP.machineAlias($0, name: name) }
        return alias.map { "\(name) (\($0))" } ?? name
    }

    /// Whatever is due; returns whether the model changed.
    @discardableResult
    public mutating func poll(_ execute: Execute, model: inout InspectorModel, nowNs: UInt64) throws -> Bool {
        try withoutActuallyEscaping(execute) { execute in try poll(timing: execute, model: &model, nowNs: nowNs) }
    }

    private mutating func poll(timing execute: @escaping Execute, model: inout InspectorModel, nowNs: UInt64) throws -> Bool {
        let slow = lastSlowPoll == 0 || nowNs &- lastSlowPoll >= slowSpacingNs || model.memslotsStale
        let fast = slow || lastFastPoll == 0 || nowNs &- lastFastPoll >= fastSpacingNs
        guard fast else { return false }
        lastFastPoll = nowNs
        // Only the time spent waiting for QEMU counts, not the parsing of what it said.
        let waited = Stopwatch(clock)
        let execute: Execute = { name, arguments in
            let started = waited.clock()
            defer { waited.ns += waited.clock() &- started }
            return try execute(name, arguments)
        }
        if slow {
            lastSlowPoll = nowNs
            try refreshMemory(execute, model: &model)
            cpuList = QEMUQMP.CPU.list(try execute(QEMUQMP.Command.queryCPUsFast.rawValue, nil))
            if let s = try? execute(QEMUQMP.Command.queryStats.rawValue, QEMUQMP.kvmStats(target: .vm)) { model.vmStats = QEMUQMP.kvmStatsByPath(s)[""] ?? [] }
            slowSpacingNs = spacing(slowIntervalNs, spentNs: waited.ns)
            waited.ns = 0
        }
        defer {
            fastSpacingNs = spacing(fastIntervalNs, spentNs: waited.ns)
            model.vm.pollIntervalNs = fastSpacingNs
        }
        let status = QEMUQMP.Status(json: try execute(QEMUQMP.Command.queryStatus.rawValue, nil))
        let runState = status.status
        let running = status.running
        let stateChanged = runState != model.vm.runState
        model.vm.runState = runState
        // Registers and counters move only while the VM runs (and at the moment it stops).
        if slow || running || stateChanged {
            let interval = lastVCPURefresh == 0 ? 1 : nowNs &- lastVCPURefresh
            lastVCPURefresh = nowNs
            try refreshVCPUs(execute, model: &model, runState: runState, running: running, intervalNs: interval)
        }
        return true
    }

    /// Time added up across calls.
    final class Stopwatch {
        let clock: @Sendable () -> UInt64
        var ns: UInt64 = 0
        init(_ clock: @escaping @Sendable () -> UInt64) { self.clock = clock }
    }

    /// At least `interval`, and long enough that `spentNs` is at most `budget` of it.
    func spacing(_ interval: UInt64, spentNs: UInt64) -> UInt64 {
        max(interval, UInt64(min(Double(spentNs) / budget, 3_600e9)))
    }

    /// What an HMP command printed, through `human-monitor-command`.
    static func hmp(_ execute: Execute, _ commandLine: String) throws -> String {
        try execute(QEMUQMP.Command.humanMonitorCommand.rawValue, QEMUQMP.hmp(commandLine)).stringValue ?? ""
    }

    /// After an action: poll everything at the next pass.
    public mutating func refreshSoon() {
        lastFastPoll = 0
        lastSlowPoll = 0
    }

    /// Whether a refresh was asked for and the next poll has not yet made it.
    public var wantsRefresh: Bool { lastFastPoll == 0 }

    /// The first `size` bytes at `gpa`, read with HMP `xp` (QEMU's own physical-memory dump; reads only).
    public func readMemory(_ execute: Execute, gpa: UInt64, size: Int = 256) throws -> [UInt8] {
        let text = try Self.hmp(execute, "xp /\(size)xb 0x\(String(gpa, radix: 16))")
        let dump = QEMUText.memoryDump(text)
        if dump.bytes.isEmpty { throw ControlClientError.command(errorClass: "GenericError", desc: "xp 0x\(String(gpa, radix: 16)): \(dump.error ?? "no output")") }
        return dump.bytes
    }

    /// A QEMU event: run-state changes make the next poll come at once; device changes re-read memory.
    public mutating func apply(event e: Event, model: inout InspectorModel) {
        guard case .other(let name, _) = e else { return }
        switch name {
        case "STOP", "RESUME", "SHUTDOWN", "RESET", "POWERDOWN", "GUEST_PANICKED", "SUSPEND", "WAKEUP":
            lastFastPoll = 0
        case "DEVICE_DELETED", "ACPI_DEVICE_OST", "MEMORY_DEVICE_SIZE_CHANGE":
            model.memslotsStale = true
        default:
            break
        }
    }

    mutating func refreshMemory(_ execute: Execute, model: inout InspectorModel) throws {
        let tree = try Self.hmp(execute, "info mtree -f")
        let ranges = QEMUText.flatView(tree).filter(\.kvm)
        let devices = (try? execute(QEMUQMP.Command.queryMemoryDevices.rawValue, nil)).map(QEMUQMP.MemoryDevice.list) ?? []
        model.memslots = ranges.enumerated().map { i, r in
            var row = MemslotRow(qemu: r, ordinal: i, guestMemfd: guestMemfdGuest != nil)
            row.device = Self.memoryDevice(containing: r, devices)
            return row
        }
        model.vm.ramSize = QEMUQMP.ramSize(try execute(QEMUQMP.Command.queryMemorySizeSummary.rawValue, nil))
        model.memslotsStale = false
    }

    /// The memory device (`query-memory-devices`) whose range holds `r`: "dimm dimm1", "+ hotplugged" when
    /// plugged after start. Matched by address, since a backend's region name need not be unique.
    static func memoryDevice(containing r: QEMUText.FlatRange, _ devices: [QEMUQMP.MemoryDevice]) -> String? {
        for d in devices {
            guard let addr = d.address, let size = d.regionSize,
                  r.start >= addr, r.start - addr < size, r.size <= size - (r.start - addr) else { continue }
            let name = [d.type, d.id].compactMap { $0 }.joined(separator: " ")
            return d.hotplugged ? name + ", hotplugged" : name
        }
        return nil
    }

    mutating func refreshVCPUs(_ execute: Execute, model: inout InspectorModel, runState: String, running: Bool, intervalNs: UInt64) throws {
        let regs = QEMUText.registers(try Self.hmp(execute, "info registers -a"))
        var stats: [String: [(String, UInt64)]] = [:]
        if let s = try? execute(QEMUQMP.Command.queryStats.rawValue, QEMUQMP.kvmStats(target: .vcpu)) { stats = QEMUQMP.kvmStatsByPath(s) }
        var rows: [VCPURow] = []
        for c in cpuList {
            guard let index = c.index else { continue }
            let path = c.qomPath
            let r = regs[index] ?? QEMUText.CPURegisters()
            let st = stats[path] ?? []
            // QEMU's run states (query-status) as vCPU states.
            let state: VCPURunState = switch runState {
            case QEMUQMP.RunState.running.rawValue: r.halted ? .halted : .running
            case QEMUQMP.RunState.shutdown.rawValue: .shutdown
            case QEMUQMP.RunState.internalError.rawValue, QEMUQMP.RunState.ioError.rawValue, QEMUQMP.RunState.guestPanicked.rawValue: .error
            default: running ? .running : .paused
            }
            var row = VCPURow(index: index, threadID: c.threadID, state: .known(state), lastExit: "-",
                              exitCounts: st.filter { $0.0.hasSuffix("_exits") },
                              registers: r.orderedGeneral, segments: r.orderedSelectors, controlRegisters: r.orderedControl,
                              stats: st)
            row.exitTotal = st.first { $0.0 == "exits" }?.1
            rows.append(row)
        }
        model.apply(vcpus: rows, intervalNs: intervalNs)
        model.vm.vcpus = rows.count
    }

    /// What an inspector action becomes on QEMU: one of QEMU's own commands, a memory read through HMP `xp`, or a
    /// refusal with the reason.
    public enum Translation: Sendable, Equatable {
        case run(name: String, arguments: JSON?, description: String)
        case readMemory(gpa: UInt64, size: Int)
        case refuse(String)
    }

    public func translate(_ action: InspectorAction) -> Translation {
        switch action {
        case .vcpu(_, .pause): .run(name: QEMUQMP.Command.stop.rawValue, arguments: nil, description: "stop the VM (QEMU's stop pauses every vCPU)")
        case .vcpu(_, .resume): .run(name: QEMUQMP.Command.cont.rawValue, arguments: nil, description: "continue the VM (QEMU's cont)")
        case .vcpu(_, .step): .refuse("\(versionText) has no QMP command to run a vCPU to its next exit (its gdbstub can single-step)")
        case .inject(.nmi, _, _, _):
            .run(name: QEMUQMP.Command.injectNMI.rawValue, arguments: nil, description: "inject an NMI (QEMU's inject-nmi: every vCPU)")
        case .inject(let kind, _, _, _): .refuse("\(versionText) offers inject-nmi only; \(kind.rawValue) injection needs vmscope's VMM")
        case .convert: .refuse("\(versionText) has no QMP command for private/shared conversion")
        case .setPolicy: .refuse("\(versionText) has no memory-fault policy to set")
        // The page's worth the inspector asks for (at most 4096 bytes: one HMP xp, about 20 KB of text).
        case .readMemory(let gpa, let size): .readMemory(gpa: gpa, size: Int(min(max(size, 1), 4096)))
        }
    }
}

extension QEMUPoller {
    /// A QEMU event as parsed JSON.
    public mutating func apply(event e: JSON, model: inout InspectorModel) {
        if let event = Event(message: e) { apply(event: event, model: &model) }
    }
}
