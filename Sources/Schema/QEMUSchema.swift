/// A stock QEMU's QMP as far as vmscope speaks it (QEMU's QAPI schema, qapi/*.json): the commands it sends and the
/// members of their replies, spelled here once. Reading is lenient, as for vmscope's own replies: a member missing or
/// of the wrong type reads as absent, members nobody knows are ignored.
public enum QEMUQMP {
    /// Its members' names on the wire, spelled here once: decoding and encoding name them only through this table.
    enum Key {
        static let name = "name", arch = "arch", enabled = "enabled", present = "present"
        static let alias = "alias", status = "status", running = "running", baseMemory = "base-memory"
        static let pluggedMemory = "plugged-memory", data = "data", type = "type", id = "id", addr = "addr"
        static let memaddr = "memaddr", maxSize = "max-size", size = "size", hotplugged = "hotplugged"
        static let cpuIndex = "cpu-index", qomPath = "qom-path", threadId = "thread-id", provider = "provider"
        static let stats = "stats", value = "value", path = "path", property = "property"
        static let commandLine = "command-line", target = "target", providers = "providers"
    }

    /// The commands vmscope sends a stock QEMU (none of them changes the VM but `stop`, `cont` and `inject-nmi`,
    /// which the inspector asks about first).
    public enum Command: String, Sendable, CaseIterable {
        case queryName = "query-name", queryKVM = "query-kvm", queryTarget = "query-target", queryMachines = "query-machines"
        case queryStatus = "query-status", queryCPUsFast = "query-cpus-fast", queryStats = "query-stats"
        case queryMemoryDevices = "query-memory-devices", queryMemorySizeSummary = "query-memory-size-summary"
        case qomGet = "qom-get", humanMonitorCommand = "human-monitor-command"
        case stop, cont, injectNMI = "inject-nmi"
    }

    /// `qom-get`'s arguments: a property of the object at `path`.
    public static func qomGet(path: String, property: String) -> JSON {
        .object([(Key.path, .string(path)), (Key.property, .string(property))])
    }

    /// `human-monitor-command`'s arguments: one HMP command line (`info mtree -f`).
    public static func hmp(_ commandLine: String) -> JSON { .object([(Key.commandLine, .string(commandLine))]) }

    /// What `query-stats` reports on.
    public enum StatsTarget: String, Sendable { case vm, vcpu }

    /// `query-stats`' arguments: KVM's binary statistics of the VM or of every vCPU.
    public static func kvmStats(target: StatsTarget) -> JSON {
        .object([(Key.target, .string(target.rawValue)), (Key.providers, .array([.object([(Key.provider, .string("kvm"))])]))])
    }

    /// The QOM path and properties vmscope reads: the machine's type and its confidential-guest object.
    public static let machinePath = "/machine", typeProperty = "type", confidentialGuestProperty = "confidential-guest-support"
    /// The confidential-guest object types whose RAM QEMU backs with guest_memfd (QEMU 9.1+).
    public static let guestMemfdGuestTypes: Set<String> = ["sev-snp-guest", "tdx-guest"]

    /// The greeting's `QMP.version.qemu` (0.0.0 where it has none).
    public struct Version: Sendable, Equatable {
        public var major: Int, minor: Int, micro: Int
        public init(greeting: JSON) {
            let g = QMP.Greeting(greeting)
            major = g?.major ?? 0
            minor = g?.minor ?? 0
            micro = g?.micro ?? 0
        }
    }

    /// `query-name`: the VM's `-name` ("" without one).
    public static func name(_ j: JSON) -> String { j[Key.name]?.stringValue ?? "" }

    /// `query-target`: the guest architecture.
    public static func arch(_ j: JSON) -> String? { j[Key.arch]?.stringValue }

    /// `query-kvm`.
    public struct KVMState: Sendable, Equatable {
        public var enabled: Bool
        public var present: Bool
        public init(json j: JSON) {
            enabled = j[Key.enabled]?.boolValue == true
            present = j[Key.present]?.boolValue == true
        }
    }

    /// `query-machines`: the alias of machine type `name` (`q35` for `pc-q35-7.2`), if it has one.
    public static func machineAlias(_ j: JSON, name: String) -> String? {
        j.arrayValue?.first { $0[Key.name]?.stringValue == name }?[Key.alias]?.stringValue
    }

    /// `query-status`.
    public struct Status: Sendable, Equatable {
        /// QEMU's run state (`running`, `paused`, `shutdown`, `internal-error`, ...): "?" where it gave none.
        public var status: String
        public var running: Bool
        public init(json j: JSON) {
            status = j[Key.status]?.stringValue ?? "?"
            running = j[Key.running]?.boolValue ?? false
        }
    }

    /// QEMU's run states (`query-status`' `status`) that say a vCPU cannot run again by itself.
    public enum RunState: String, Sendable {
        case running, shutdown, internalError = "internal-error", ioError = "io-error", guestPanicked = "guest-panicked"
    }

    /// `query-memory-size-summary`: RAM at start plus what was plugged since.
    public static func ramSize(_ j: JSON) -> UInt64 {
        (j[Key.baseMemory]?.uint64Value ?? 0) &+ (j[Key.pluggedMemory]?.uint64Value ?? 0)
    }

    /// One of `query-memory-devices`: DIMMs and NVDIMMs say `addr` and `size`; virtio-mem, virtio-pmem and sgx-epc say
    /// `memaddr`, and virtio-mem's region is `max-size` long (`size` is what is plugged of it).
    public struct MemoryDevice: Sendable, Equatable {
        public var type: String?
        public var id: String?
        public var address: UInt64?
        public var regionSize: UInt64?
        public var hotplugged: Bool
        public init(json d: JSON) {
            let data = d[Key.data]
            type = d[Key.type]?.stringValue
            id = data?[Key.id]?.stringValue
            address = (data?[Key.addr] ?? data?[Key.memaddr])?.uint64Value
            regionSize = (data?[Key.maxSize] ?? data?[Key.size])?.uint64Value
            hotplugged = data?[Key.hotplugged]?.boolValue == true
        }
        public static func list(_ j: JSON) -> [MemoryDevice] { (j.arrayValue ?? []).map(MemoryDevice.init(json:)) }
    }

    /// One of `query-cpus-fast`.
    public struct CPU: Sendable, Equatable {
        public var index: Int?
        public var qomPath: String
        public var threadID: Int
        public init(json c: JSON) {
            index = c[Key.cpuIndex]?.intValue
            qomPath = c[Key.qomPath]?.stringValue ?? ""
            threadID = c[Key.threadId]?.intValue ?? 0
        }
        public static func list(_ j: JSON) -> [CPU] { (j.arrayValue ?? []).map(CPU.init(json:)) }
    }

    /// `query-stats` replies: the KVM binary statistics QEMU reads for us. Per `qom-path` ("" for the VM target), the
    /// integer and boolean statistics in QEMU's order; histograms are left out.
    public static func kvmStatsByPath(_ reply: JSON) -> [String: [(String, UInt64)]] {
        var out: [String: [(String, UInt64)]] = [:]
        for entry in reply.arrayValue ?? [] where entry[Key.provider]?.stringValue == "kvm" {
            let path = entry[Key.qomPath]?.stringValue ?? ""
            var values: [(String, UInt64)] = out[path] ?? []
            for s in entry[Key.stats]?.arrayValue ?? [] {
                guard let name = s[Key.name]?.stringValue else { continue }
                if let v = s[Key.value]?.uint64Value { values.append((name, v)) }
                else if let b = s[Key.value]?.boolValue { values.append((name, b ? 1 : 0)) }
            }
            out[path] = values
        }
        return out
    }
}
