import Foundation
import Schema
import Testing

/// Issue 16's rule: no member name or enumeration value of the control protocol is spelled outside the schema
/// (`Sources/Schema`). docs/architecture.md says how this check works and where its exceptions are.
///
/// The names are every identifier-like string literal in `Sources/Schema` plus every schema enumeration's raw
/// values; a use is such a literal where Swift code reads or writes JSON or compares a value: `["x"]`, `("x", .`,
/// `.string("x")`, `== "x"`, `!= "x"`, `case "x"`. Files with a schema of their own are exempt, each for a reason.
@Suite struct SchemaSpellingTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Files that spell another format's names, which happen to share words with ours.
    static let ownSchemas: [String: String] = [
        "Sources/Inspector/QEMUSource.swift": "QEMU's QMP schema (query-status, query-cpus-fast, ...), spelled only here",
        "Sources/Inspector/QEMUParsers.swift": "QEMU's HMP text and query-stats, spelled only here",
        "Sources/Inspector/Recording.swift": "the recording file's own members (docs/recording.md)",
        "Sources/Inspector/Theme.swift": "theme files (themes/*.theme)",
        "Sources/FuzzTargets/FuzzTargets.swift": "the fuzz properties read replies generically, on purpose apart from the schema they check",
        "Sources/HostTracing/EventLayout.swift": "the kernel's trace event fields and `vmscope trace --json`'s output",
        "Sources/HostTracing/TracedRecords.swift": "`vmscope trace --json`'s paired records (conversion, memory-fault, attribute-map)",
        "Sources/HostTracing/HostVMs.swift": "`vmscope top --json`'s output and KVM's debugfs statistics",
        "Sources/Libvirt/DomainXML.swift": "libvirt's domain XML (elements and attributes: vcpu, type, ...)",
    ]

    static func schemaNames() throws -> Set<String> {
        var names = Set<String>()
        let dir = root.appendingPathComponent("Sources/Schema")
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.path) where f.hasSuffix(".swift") {
            let text = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
            for m in text.matches(of: /"([A-Za-z][A-Za-z0-9_-]*)"/) { names.insert(String(m.1)) }
        }
        func add<E: SchemaEnum>(_: E.Type) { for c in E.allCases { names.insert(c.rawValue) } }
        add(FaultAccess.self); add(FaultSource.self); add(FaultExit.self); add(PageAttribute.self); add(FaultAction.self)
        add(InjectionKind.self); add(FaultPolicy.self); add(VCPURunState.self); add(VCPUAction.self); add(MemslotView.self)
        add(MemslotBacking.self); add(ReadView.self); add(AttributeEngineKind.self); add(ConversionCause.self)
        add(CommandName.self); add(EventName.self); add(GuestCounter.self); add(GuestReportKind.self)
        return names
    }

    @Test func noProtocolNameIsSpelledOutsideTheSchema() throws {
        let names = try Self.schemaNames()
        #expect(names.contains("time-ns") && names.contains("fault-stopped") && names.contains("MEMORY_FAULT"), "the names were found")
        let uses = [/\["([A-Za-z][A-Za-z0-9_-]*)"\]/, /\(\s*"([A-Za-z][A-Za-z0-9_-]*)"\s*,\s*\./, /\.string\("([A-Za-z][A-Za-z0-9_-]*)"\)/,
                    /[=!]=\s*"([A-Za-z][A-Za-z0-9_-]*)"/, /\bcase\s+"([A-Za-z][A-Za-z0-9_-]*)"/]
        var found: [String] = []
        let sources = Self.root.appendingPathComponent("Sources")
        let files = FileManager.default.enumerator(atPath: sources.path)!.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
        #expect(files.count > 50)
        for f in files where !f.hasPrefix("Schema/") && Self.ownSchemas["Sources/" + f] == nil {
            let text = try String(contentsOf: sources.appendingPathComponent(f), encoding: .utf8)
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                // Log fields are the log's, not the protocol's.
                if line.contains("metadata:") || line.contains("metadata[") { continue }
                for re in uses {
                    for m in line.matches(of: re) where names.contains(String(m.1)) {
                        found.append("Sources/\(f):\(n + 1): \"\(m.1)\"")
                    }
                }
            }
        }
        #expect(found.isEmpty, "spelled outside Sources/Schema:\n\(found.joined(separator: "\n"))")
    }

    /// The check finds what it is for: a line as the old inspector wrote it.
    @Test func theCheckWouldCatchTheOldSpelling() throws {
        let names = try Self.schemaNames()
        let old = #"if e["event"]?.stringValue == "MEMORY_FAULT", r["source"] == .string("kernel") {"#
        let hits = old.matches(of: /\["([A-Za-z][A-Za-z0-9_-]*)"\]|==\s*"([A-Za-z][A-Za-z0-9_-]*)"|\.string\("([A-Za-z][A-Za-z0-9_-]*)"\)/)
            .compactMap { m in [m.1, m.2, m.3].compactMap { $0 }.first.map(String.init) }.filter(names.contains)
        #expect(hits == ["event", "MEMORY_FAULT", "source", "kernel"])
    }
}
