import ControlProtocol

/// Keeps an `InspectorModel` fed from a stock QEMU's QMP socket, with no agent in the guest or beside QEMU.
///
/// QEMU sends events for run-state changes only, so the rest is polled, at rates chosen by what each command
/// costs QEMU (0.3 to 1.6 ms of its CPU per call on this project's machines; `query-stats` is the dearest):
/// - every second, the run state; while the VM runs, also the registers (`info registers -a`, which briefly
///   stops each vCPU) and the vCPUs' KVM statistics;
/// - every five seconds, the CPU list (`query-cpus-fast`), the memory map (`info mtree -f`), VM-wide
///   statistics, and the registers and statistics of a paused VM (they only move when it runs).
/// An event that says something changed makes the next poll come at once. A paused QEMU then spends well
/// under 1% of a core answering (`QEMUTUITests` measures it).
public struct QEMUSource: Sendable {
    /// Sends one command and returns its `return` value; a refusal or a broken connection throws.
    public typealias Execute = (String, JSON?) throws -> JSON

    public var fastIntervalNs: UInt64 = 1_000_000_000
    public var slowIntervalNs: UInt64 = 5_000_000_000
    public private(set) var version: (major: Int, minor: Int, micro: Int)
    public private(set) var versionText: String
    /// The confidential-guest object's type when QEMU backs RAM with guest_memfd (SEV-SNP, TDX; QEMU 9.1+).
    public private(set) var guestMemfdGuest: String?
    private var lastFastPoll: UInt64 = 0
    private var lastSlowPoll: UInt64 = 0
    private var lastVCPURefresh: UInt64 = 0
    /// `query-cpus-fast` as last read.
    private var cpuList: [JSON] = []

    /// From the greeting's `QMP.version.qemu`.
    public init(greeting: JSON) {
        let q = greeting["QMP"]?["version"]?["qemu"]
        version = (q?["major"]?.intValue ?? 0, q?["minor"]?.intValue ?? 0, q?["micro"]?.intValue ?? 0)
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

    /// Everything once, right after connecting.
    public mutating func start(_ execute: Execute, model: inout InspectorModel, nowNs: UInt64) throws {
        var vm = VMInfo()
        vm.qemuVersion = versionText
        let name = try execute("query-name", nil)["name"]?.stringValue ?? ""
        vm.name = name.isEmpty ? "(no -name)" : name
        let kvm = try execute("query-kvm", nil)
        vm.accelerator = kvm["enabled"]?.boolValue == true ? "kvm" : (kvm["present"]?.boolValue == true ? "tcg (KVM present, not used)" : "tcg")
        vm.engine = "none"
        vm.policy = "-"
        // QEMU's own commands are all it takes: stop/cont and inject-nmi need no opt-in.
        vm.mutationsAllowed = true
        vm.faultInjectionAllowed = true
        model.vm = vm
        if canUseGuestMemfd, let cgs = try? execute("qom-get", .object([("path", .string("/machine")), ("property", .string("confidential-guest-support"))])).stringValue,
           !cgs.isEmpty, let type = try? execute("qom-get", .object([("path", .string(cgs)), ("property", .string("type"))])).stringValue,
           ["sev-snp-guest", "tdx-guest"].contains(type) {
            guestMemfdGuest = type
        }
        model.unavailable = unavailableViews
        model.runs = []
        refreshSoon()
        try poll(execute, model: &model, nowNs: nowNs)
    }

    /// Whatever is due; returns whether the model changed.
    @discardableResult
    public mutating func poll(_ execute: Execute, model: inout InspectorModel, nowNs: UInt64) throws -> Bool {
        let slow = lastSlowPoll == 0 || nowNs &- lastSlowPoll >= slowIntervalNs || model.memslotsStale
        let fast = slow || lastFastPoll == 0 || nowNs &- lastFastPoll >= fastIntervalNs
        guard fast else { return false }
        lastFastPoll = nowNs
        if slow {
            lastSlowPoll = nowNs
            try refreshMemory(execute, model: &model)
            cpuList = try execute("query-cpus-fast", nil).arrayValue ?? []
            if let s = try? execute("query-stats", Self.statsArguments("vm")) { model.vmStats = QEMUStats.byPath(s)[""] ?? [] }
        }
        let status = try execute("query-status", nil)
        let runState = status["status"]?.stringValue ?? "?"
        let running = status["running"]?.boolValue ?? false
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

    /// What an HMP command printed, through `human-monitor-command`.
    static func hmp(_ execute: Execute, _ commandLine: String) throws -> String {
        try execute("human-monitor-command", .object([("command-line", .string(commandLine))])).stringValue ?? ""
    }

    static func statsArguments(_ target: String) -> JSON {
        .object([("target", .string(target)), ("providers", .array([.object([("provider", .string("kvm"))])]))])
    }

    /// After an action: poll everything at the next pass.
    public mutating func refreshSoon() {
        lastFastPoll = 0
        lastSlowPoll = 0
    }

    /// The first `size` bytes at `gpa`, read with HMP `xp` (QEMU's own physical-memory dump; reads only).
    public func readMemory(_ execute: Execute, gpa: UInt64, size: Int = 256) throws -> [UInt8] {
        let text = try Self.hmp(execute, "xp /\(size)xb 0x\(String(gpa, radix: 16))")
        let dump = QEMUText.memoryDump(text)
        if dump.bytes.isEmpty { throw ControlClientError.command(errorClass: "GenericError", desc: "xp 0x\(String(gpa, radix: 16)): \(dump.error ?? "no output")") }
        return dump.bytes
    }

    /// A QEMU event: run-state changes make the next poll come at once; device changes re-read memory.
    public mutating func apply(event e: JSON, model: inout InspectorModel) {
        switch e["event"]?.stringValue {
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
        model.memslots = ranges.enumerated().map { MemslotRow(qemu: $1, ordinal: $0, guestMemfd: guestMemfdGuest != nil) }
        let summary = try execute("query-memory-size-summary", nil)
        model.vm.ramSize = (summary["base-memory"]?.uint64Value ?? 0) + (summary["plugged-memory"]?.uint64Value ?? 0)
        model.memslotsStale = false
    }

    mutating func refreshVCPUs(_ execute: Execute, model: inout InspectorModel, runState: String, running: Bool, intervalNs: UInt64) throws {
        let regs = QEMUText.registers(try Self.hmp(execute, "info registers -a"))
        var stats: [String: [(String, UInt64)]] = [:]
        if let s = try? execute("query-stats", Self.statsArguments("vcpu")) { stats = QEMUStats.byPath(s) }
        var rows: [VCPURow] = []
        for c in cpuList {
            guard let index = c["cpu-index"]?.intValue else { continue }
            let path = c["qom-path"]?.stringValue ?? ""
            let r = regs[index] ?? QEMUText.CPURegisters()
            let st = stats[path] ?? []
            let state: String = switch runState {
            case "running": r.halted ? "halted" : "running"
            case "shutdown": "shutdown"
            case "internal-error", "io-error", "guest-panicked": "error"
            default: running ? "running" : "paused"
            }
            var row = VCPURow(index: index, threadID: c["thread-id"]?.intValue ?? 0, state: state, lastExit: "-",
                              exitCounts: st.filter { $0.0.hasSuffix("_exits") },
                              registers: r.orderedGeneral, segments: r.orderedSelectors, controlRegisters: r.orderedControl,
                              stats: st)
            row.exitTotal = st.first { $0.0 == "exits" }?.1
            rows.append(row)
        }
        model.apply(vcpus: rows, intervalNs: intervalNs)
        model.vm.vcpus = rows.count
    }

    /// What an inspector action becomes on QEMU: one of QEMU's own commands, or a refusal with the reason.
    public enum Translation: Sendable, Equatable {
        case run(name: String, arguments: JSON?, description: String)
        case refuse(String)
    }

    public func translate(_ name: String, _ arguments: JSON) -> Translation {
        switch name {
        case "vcpu-control":
            switch arguments["action"]?.stringValue {
            case "pause": return .run(name: "stop", arguments: nil, description: "stop the VM (QEMU's stop pauses every vCPU)")
            case "resume": return .run(name: "cont", arguments: nil, description: "continue the VM (QEMU's cont)")
            default: return .refuse("\(versionText) has no QMP command to single-step a vCPU (its gdbstub can)")
            }
        case "inject-fault":
            if arguments["kind"]?.stringValue == "nmi" {
                return .run(name: "inject-nmi", arguments: nil, description: "inject an NMI (QEMU's inject-nmi: every vCPU)")
            }
            return .refuse("\(versionText) offers inject-nmi only; \(arguments["kind"]?.stringValue ?? "this") injection needs vmscope's VMM")
        case "set-memory-attributes":
            return .refuse("\(versionText) has no QMP command for private/shared conversion")
        case "set-fault-policy":
            return .refuse("\(versionText) has no memory-fault policy to set")
        default:
            return .refuse("\(versionText) has no equivalent of \(name)")
        }
    }
}
