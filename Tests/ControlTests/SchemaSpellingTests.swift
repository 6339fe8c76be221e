import Foundation
import Schema
import Testing

/// Issue 16's rule: no member name or enumeration value of the control protocol is spelled outside the schema
/// (`Sources/Schema`). docs/architecture.md says how this check works and where its exceptions are.
///
/// Reading is the compiler's to enforce since issue 30 (`noJSONMemberIsReadOutsideTheSchema`: JSON's member subscript
/// is internal to Schema). This grep keeps watch over writing: the names are every identifier-like string literal in
/// `Sources/Schema` plus every schema enumeration's raw values; a use is such a literal where Swift code builds JSON:
/// `("x", .`, `.string("x")` (and `["x"]`, which can only be a dictionary's now). Comparisons (`== "x"`, `case "x"`)
/// are no longer looked for: a value read from JSON reaches other modules only as a schema type, and the names of
/// QEMU's QMP and the recording files (in Schema since issue 30) made them match words that are not JSON at all (a
/// command-line `end`, the `socket` system call, QEMU's `-accel kvm`). Files with a schema of their own are exempt,
/// each for a reason.
@Suite struct SchemaSpellingTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Files that spell another format's names, which happen to share words with ours.
    static let ownSchemas: [String: String] = [
        "Sources/Inspector/QEMUParsers.swift": "QEMU's HMP text (info registers, info mtree), spelled only here",
        "Sources/Inspector/Theme.swift": "theme files (themes/*.theme)",
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
        let uses = [/\["([A-Za-z][A-Za-z0-9_-]*)"\]/, /\(\s*"([A-Za-z][A-Za-z0-9_-]*)"\s*,\s*\./, /\.string\("([A-Za-z][A-Za-z0-9_-]*)"\)/]
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

    /// Issue 30's rule, which the compiler keeps: JSON's member subscript is internal to Schema, so no other module
    /// reads a member by name (QEMU's QMP, the recording and raw-trace files are read by Schema's types too); tests
    /// read replies through `@testable import Schema`, which no source may use.
    @Test func noJSONMemberIsReadOutsideTheSchema() throws {
        let json = try String(contentsOf: Self.root.appendingPathComponent("Sources/Schema/JSON.swift"), encoding: .utf8)
        let subscripts = json.split(separator: "\n").filter { $0.contains("subscript(key: String)") }
        #expect(subscripts.count == 1 && subscripts.allSatisfy { !$0.contains("public") && !$0.contains("package") },
                "JSON's member subscript stays internal: \(subscripts)")
        let sources = Self.root.appendingPathComponent("Sources")
        var testable: [String] = []
        for f in FileManager.default.enumerator(atPath: sources.path)!.compactMap({ $0 as? String }) where f.hasSuffix(".swift") {
            let text = try String(contentsOf: sources.appendingPathComponent(f), encoding: .utf8)
            if text.split(separator: "\n").contains(where: { $0.hasPrefix("@testable import") }) { testable.append(f) }
        }
        #expect(testable.isEmpty, "sources that would read around the rule: \(testable)")
    }

    /// Issue 30's "each member name spelled once in fact": inside Schema a member's name is written only in its
    /// type's table (`enum Key { static let … }`, or a table several replies share such as `VCPUKey`), and decoding
    /// (`j[Key.gpa]`), encoding (`(Key.gpa, .u(gpa))`) and the server's reading of arguments (`a.uint64(Key.gpa)`)
    /// all name it from there, so the two directions cannot drift apart.
    @Test func schemaTypesNameTheirMembersFromOneTable() throws {
        let dir = Self.root.appendingPathComponent("Sources/Schema")
        var found: [String] = []
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() where f.hasSuffix(".swift") {
            let text = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
            found += Self.literalMembers(in: text).map { "Sources/Schema/\(f):\($0)" }
        }
        #expect(found.isEmpty, "member names spelled outside their type's table:\n\(found.joined(separator: "\n"))")
        // It finds what it is for: the lines as they were before.
        let before = """
                name = j["name"]?.stringValue
                ("vm-type", .opt(vmType.map(JSON.u)), false), ("slot", slotKnown ? .i(slot) : .null),
                gpa = try a.uint64("gpa")
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            """
        #expect(Self.literalMembers(in: before).map { $0.components(separatedBy: ": ").last ?? "" } == ["\"name\"", "\"vm-type\"", "\"slot\"", "\"gpa\""])
    }

    /// Lines (number: literal) where a string literal is used as a JSON member in code: a subscript, a member tuple's
    /// name, an argument read; not in comments, and not in the tables (`static let`).
    static func literalMembers(in text: String) -> [String] {
        let uses = [/\["([A-Za-z][A-Za-z0-9_-]*)"\]/, /(?:^|[^A-Za-z0-9_])\(\s*"([A-Za-z][A-Za-z0-9_-]*)"\s*,/,
                    /\ba\.[a-zA-Z0-9]+\(\s*"([A-Za-z][A-Za-z0-9_-]*)"/]
        var out: [String] = []
        for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let code = line.trimmingCharacters(in: .whitespaces)
            if code.hasPrefix("//") || code.hasPrefix("static let ") { continue }
            let beforeComment = code.components(separatedBy: " // ").first ?? code
            for re in uses { for m in beforeComment.matches(of: re) { out.append("\(n + 1): \"\(m.1)\"") } }
        }
        return out
    }

    /// The check finds what it is for: a line as the old inspector wrote it.
    @Test func theCheckWouldCatchTheOldSpelling() throws {
        let names = try Self.schemaNames()
        let old = #"if e["event"]?.stringValue == "MEMORY_FAULT", r["source"] == .string("kernel") {"#
        let hits = old.matches(of: /\["([A-Za-z][A-Za-z0-9_-]*)"\]|\.string\("([A-Za-z][A-Za-z0-9_-]*)"\)/)
            .compactMap { m in [m.1, m.2].compactMap { $0 }.first.map(String.init) }.filter(names.contains)
        #expect(hits == ["event", "source", "kernel"])
    }
}
