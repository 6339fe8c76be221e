@testable import Schema
import ControlProtocol
import ControlServer
import Foundation
import Logging
import Synchronization
import Testing
import VMM

/// Log lines a test can read back (the audit trail).
final class CapturedLog: Sendable {
    let lines = Mutex<[(message: String, metadata: [String: String])]>([])

    var logger: Logger {
        Logger(label: "test") { _ in Handler(log: self) }
    }

    func audit() -> [[String: String]] {
        lines.withLock { $0.filter { $0.message == "audit" }.map(\.metadata) }
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let m = (metadata.merging(event.metadata ?? [:]) { $1 }).mapValues { "\($0)" }
            log.lines.withLock { $0.append(("\(event.message)", m)) }
        }
    }
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct SecurityTests {
    /// How the VMM was started.
    enum Mode: String, CaseIterable { case locked, mutations, injection, readOnly }

    /// Every command after negotiation: arguments that would succeed, and the modes that must allow it.
    static let table: [(name: String, arguments: String, allowedIn: Set<Mode>)] = [
        ("query-commands", "{}", Set(Mode.allCases)),
        ("query-version", "{}", Set(Mode.allCases)),
        ("query-vm", "{}", Set(Mode.allCases)),
        ("query-memslots", "{}", Set(Mode.allCases)),
        ("query-memory-attributes", #"{"gpa":0,"size":4096}"#, Set(Mode.allCases)),
        ("query-vcpus", "{}", Set(Mode.allCases)),
        ("query-memory-faults", #"{"limit":1}"#, Set(Mode.allCases)),
        ("query-snapshot", #"{"faults":1}"#, Set(Mode.allCases)),
        ("query-metrics", #"{"conversion-times-after":0}"#, Set(Mode.allCases)),
        // The connection's own: what it is sent (a read-only client may turn its events off and on).
        ("set-events", #"{"enabled":true}"#, Set(Mode.allCases)),
        ("set-memory-attributes", #"{"gpa":16777216,"size":4096,"private":false}"#, [.mutations, .injection]),
        ("set-fault-policy", #"{"policy":"report"}"#, [.mutations, .injection]),
        ("vcpu-control", #"{"index":0,"action":"pause"}"#, [.mutations, .injection]),
        ("inject-fault", #"{"kind":"nmi","vcpu":1}"#, [.injection]),
        ("read-memory", #"{"gpa":0,"size":16}"#, [.locked, .mutations, .injection]),
    ]

    static func start(_ mode: Mode, log: CapturedLog) throws -> ServedVMM {
        var c = VMMConfiguration()
        c.vcpus = 2
        c.ramSize = 64 << 20
        c.guest.convertEvery = 0      // the guest changes nothing by itself: any change would be the command's
        c.guest.wrongViewEvery = 0
        switch mode {
        case .locked: break
        case .mutations: c.allowMutations = true
        case .injection: c.allowMutations = true; c.allowFaultInjection = true
        case .readOnly: c.allowMemoryReads = false
        }
        return try ServedVMM(c, logger: log.logger)
    }

    /// What a refused command must leave as it was.
    static func state(_ c: LineClient) throws -> JSON {
        let s = try c.call(#"{"execute":"query-snapshot","arguments":{"faults":0}}"#)["return"]
        let vcpus = (s?["vcpus"]?.arrayValue ?? []).map { $0["state"] ?? .null }
        return .object([("memslots", s?["memslots"] ?? .null), ("attributes", s?["attributes"] ?? .null),
                        ("policy", s?["vm"]?["fault-policy"] ?? .null), ("vcpus", .array(vcpus))])
    }

    @Test func everyCommandIsAllowedOrRefusedByHowTheVMMWasStartedAndAudited() throws {
        for mode in Mode.allCases {
            let log = CapturedLog()
            let s = try Self.start(mode, log: log)
            defer { s.stop() }
            let c = try LineClient(s.path)
            try c.negotiate()
            // The table covers every command the server offers: a new one must be placed in it.
            let offered = Set(try #require(c.call(#"{"execute":"query-commands"}"#)["return"]?.arrayValue).compactMap { $0["name"]?.stringValue })
            #expect(offered == Set(Self.table.map(\.name)).union(["qmp_capabilities"]), "\(offered.symmetricDifference(Self.table.map(\.name)))")
            var audited: [(String, Bool)] = []
            for row in Self.table {
                let before = try Self.state(c)
                let r = try c.call(#"{"execute":"\#(row.name)","arguments":\#(row.arguments)}"#)
                if row.allowedIn.contains(mode) {
                    #expect(r["return"] != nil, "\(mode): \(row.name) → \(r.serialized)")
                } else {
                    #expect(errorClass(r) == "PermissionDenied", "\(mode): \(row.name) → \(r.serialized)")
                    #expect(try Self.state(c) == before, "\(mode): the refused \(row.name) changed something")
                }
                if ["set-memory-attributes", "set-fault-policy", "vcpu-control", "inject-fault", "read-memory"].contains(row.name) {
                    audited.append((row.name, r["return"] != nil))
                }
            }
            // One audit line per mutation or memory read, done or refused, naming this process and uid.
            let lines = log.audit()
            #expect(lines.count == audited.count, "\(mode): \(lines)")
            for (line, (name, done)) in zip(lines, audited) {
                #expect(line["command"] == name && line["pid"] == "\(getpid())" && line["uid"] == "\(geteuid())", "\(line)")
                #expect(done ? line["outcome"] == "done" : line["outcome"]?.hasPrefix("refused: PermissionDenied") == true, "\(line)")
            }
            #expect(!lines.contains { $0["command"]?.hasPrefix("query") == true }, "queries are not audited")
        }
    }

    @Test func anAuditLineStaysShortWhateverTheClientSends() throws {
        let log = CapturedLog()
        let s = try Self.start(.mutations, log: log)
        defer { s.stop() }
        let c = try LineClient(s.path)
        try c.negotiate()
        let big = String(repeating: "x", count: 200_000)
        let r = try c.call(#"{"execute":"set-memory-attributes","arguments":{"gpa":16777216,"size":4096,"private":false,"junk":"\#(big)"}}"#)
        #expect(errorClass(r) == "GenericError")
        let line = try #require(log.audit().last)
        #expect(line["command"] == "set-memory-attributes" && line["outcome"]?.hasPrefix("refused: GenericError") == true)
        let shown = try #require(line["arguments"])
        #expect(shown.count < 600 && shown.hasSuffix("(200054 bytes)") && shown.hasPrefix(#"{"gpa":16777216"#), "\(shown.prefix(100))…\(shown.suffix(40))")
    }

    @Test func readMemoryIsBounded() throws {
        let log = CapturedLog()
        let s = try Self.start(.locked, log: log)
        defer { s.stop() }
        let c = try LineClient(s.path)
        try c.negotiate()
        for (args, ok) in [
            (#"{"gpa":0,"size":65536}"#, true), (#"{"gpa":67104768,"size":4096}"#, true),
            (#"{"gpa":0,"size":0}"#, false), (#"{"gpa":0,"size":65537}"#, false),
            (#"{"gpa":67108864,"size":1}"#, false), (#"{"gpa":67104769,"size":4096}"#, false),
            (#"{"gpa":18446744073709551615,"size":2}"#, false),
        ] {
            let r = try c.call(#"{"execute":"read-memory","arguments":\#(args)}"#)
            if ok {
                let data = try #require(r["return"]?["data"]?.stringValue, "\(args) → \(r.serialized)")
                let size = try #require(try JSON.parse(args)["size"]?.intValue)
                #expect(Data(base64Encoded: data)?.count == size)
            } else {
                #expect(errorClass(r) == "InvalidRange", "\(args) → \(r.serialized)")
            }
        }
    }
}
