import ControlProtocol

/// What the inspector knows about the VM, built from query replies and events (vmscope's VMM or QEMU).
/// Plain data: the controller feeds it, the renderer reads it.
public struct VMInfo: Sendable, Equatable {
    public var name = "?"
    public var pid: Int?
    public var engine = "?"
    public var sharedAliasBit: Int?
    public var ramSize: UInt64 = 0
    public var vcpus = 0
    public var mutationsAllowed = false
    public var faultInjectionAllowed = false
    public var policy = "?"
    /// A stock QEMU's own facts: its version ("QEMU 7.2.22"), run state (`query-status`) and accelerator.
    public var qemuVersion: String?
    public var runState: String?
    public var accelerator: String?
    /// A stock QEMU's machine type (`pc-q35-7.2`, with its alias when it has one: `pc-q35-7.2 (q35)`) and target
    /// architecture (`query-target`).
    public var machine: String?
    public var arch: String?
    /// How often a stock QEMU's registers and counters are read (QEMUPoller's spacing: one second, or longer
    /// where that would cost QEMU more than its budget).
    public var pollIntervalNs: UInt64?
    /// A libvirt domain's state and reason as libvirt keeps them ("paused, user"), and its XML's facts (vCPU
    /// pinning, memory backing, launch security, devices).
    public var libvirtState: String?
    public var libvirtFacts: String?

    public init() {}

    /// A vmscope VMM's `query-vm` (engine and policy as it names them; `?` where it said nothing).
    public init(_ d: VMDescription) {
        name = d.name ?? "?"
        pid = d.pid
        engine = d.attributeEngine?.rawValue ?? "?"
        sharedAliasBit = d.sharedAlias
        ramSize = d.ramSize
        vcpus = d.vcpus
        mutationsAllowed = d.mutationsAllowed
        faultInjectionAllowed = d.faultInjectionAllowed
        policy = d.faultPolicy?.rawValue ?? "?"
    }
}

/// A memslot as the views show it: the protocol's `Memslot`, with what the inspector adds (page counts, and a
/// stock QEMU's region, offset and device).
@dynamicMemberLookup
public struct MemslotRow: Sendable, Equatable {
    public var memslot: Memslot
    /// Private and shared 4 KiB pages of the RAM this slot maps (from the attribute runs).
    public var privatePages: UInt64 = 0
    public var sharedPages: UInt64 = 0
    /// Whether `slot` is KVM's slot number; false for QEMU ranges, where QMP does not say it (`slot` is then
    /// the row's ordinal and is not shown).
    public var slotKnown = true
    /// QEMU's memory region name and the range's offset into it (`info mtree -f`'s `@OFFSET`).
    public var regionName: String?
    public var regionOffset: UInt64?
    /// The memory device this range belongs to, as QEMU's `query-memory-devices` names it: `dimm dimm1`,
    /// with `hotplugged` when it was plugged after start.
    public var device: String?

    public subscript<T>(dynamicMember path: WritableKeyPath<Memslot, T>) -> T {
        get { memslot[keyPath: path] }
        set { memslot[keyPath: path] = newValue }
    }

    public init(_ memslot: Memslot) { self.memslot = memslot }

    public init?(_ j: JSON) {
        guard let m = Memslot(json: j) else { return nil }
        self.init(m)
    }

    /// A KVM-mapped range QEMU printed in `info mtree -f`: slot number unknown, QEMU's region type as backing.
    public init(qemu r: QEMUText.FlatRange, ordinal: Int, guestMemfd: Bool) {
        self.init(slot: ordinal, gpa: r.start, size: r.size, view: .known(.plain),
                  backing: .unknown(guestMemfd && r.type == "ram" ? "ram+guest_memfd" : r.type))
        slotKnown = false
        regionName = r.name
        regionOffset = r.offset
    }

    public init(slot: Int, gpa: UInt64, size: UInt64, view: Open<MemslotView>, backing: Open<MemslotBacking>, flagNames: [String] = []) {
        self.init(Memslot(slot: slot, gpa: gpa, size: size, flagNames: flagNames, view: view, backing: backing))
    }

    /// Where the RAM this slot maps starts: its GPA, without the alias bit for a slot of the shared alias.
    func ramStart(aliasMask: UInt64) -> UInt64 {
        aliasMask != 0 && memslot.view == .shared ? memslot.gpa & ~aliasMask : memslot.gpa
    }
}

/// A run of RAM pages with one attribute, in bytes.
public typealias RunRow = AttributeRun

public struct VCPURow: Sendable, Equatable {
    public var index: Int
    public var threadID: Int
    public var state: Open<VCPURunState>
    public var lastExit: String
    public var exitCounts: [(String, UInt64)]
    public var registers: [(String, UInt64)]
    public var segments: [(String, UInt64)]   // selector per segment register
    public var controlRegisters: [(String, UInt64)]
    public var stats: [(String, UInt64)]
    public var guest: [(String, UInt64)]
    /// KVM's own count of all exits where the source has one (QEMU's `exits` statistic); else the sum of
    /// `exitCounts`.
    public var exitTotal: UInt64?
    /// Why the vCPU is in state `error` (the exit and its data), where the peer says.
    public var error: String?

    public var totalExits: UInt64 { exitTotal ?? exitCounts.reduce(0) { $0.saturatingAdd($1.1) } }

    /// A vmscope VMM's vCPU.
    public init(_ v: VCPUStatus) {
        index = v.index
        threadID = v.threadID
        state = v.state
        lastExit = v.lastExit
        exitCounts = v.exitCounts
        registers = v.registers ?? []
        segments = v.specialRegisters?.segments.map { ($0.0.rawValue, $0.1.selector) } ?? []
        controlRegisters = v.specialRegisters?.control.map { ($0.0.rawValue, $0.1) } ?? []
        stats = v.stats
        guest = v.guest
        error = v.error
    }

    public init?(_ j: JSON) {
        guard let v = VCPUStatus(json: j) else { return nil }
        self.init(v)
    }

    /// Whether the state is one the views warn about.
    public var isInTrouble: Bool {
        switch state {
        case .error, .shutdown, .faultStopped: true
        default: false
        }
    }

    public init(index: Int, threadID: Int = 0, state: Open<VCPURunState>, lastExit: String, exitCounts: [(String, UInt64)] = [],
                registers: [(String, UInt64)] = [], segments: [(String, UInt64)] = [], controlRegisters: [(String, UInt64)] = [],
                stats: [(String, UInt64)] = [], guest: [(String, UInt64)] = []) {
        self.index = index
        self.threadID = threadID
        self.state = state
        self.lastExit = lastExit
        self.exitCounts = exitCounts
        self.registers = registers
        self.segments = segments
        self.controlRegisters = controlRegisters
        self.stats = stats
        self.guest = guest
    }

    public static func == (a: VCPURow, b: VCPURow) -> Bool {
        a.index == b.index && a.state == b.state && a.lastExit == b.lastExit && a.error == b.error
            && a.exitCounts.map(\.0) == b.exitCounts.map(\.0) && a.exitCounts.map(\.1) == b.exitCounts.map(\.1)
            && a.registers.map(\.1) == b.registers.map(\.1) && a.stats.map(\.1) == b.stats.map(\.1)
    }
}

/// The connection as the status bar shows it.
public enum ConnectionState: Sendable, Equatable {
    case connected(String)
    case disconnected(String)
}
