import Foundation
import Testing

/// The module graph as Package.swift declares it, and docs/architecture.md's table of it (issue 30): tiers run one
/// way (the tracefs library knows nothing of the inspector, the exporter links no UI and no zlib), and the table's
/// arrows are the package's.
@Suite struct ArchitectureTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Each target's dependencies on the package's own targets, read from Package.swift's text.
    static func localGraph() throws -> [String: Set<String>] {
        let text = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        var graph: [String: Set<String>] = [:]
        let kinds = [".target(", ".executableTarget(", ".testTarget(", ".systemLibrary("]
        var i = text.startIndex
        while let hit = kinds.compactMap({ text.range(of: $0, range: i..<text.endIndex) }).min(by: { $0.lowerBound < $1.lowerBound }) {
            // The call's text, up to its closing parenthesis.
            var depth = 1, j = hit.upperBound
            while j < text.endIndex && depth > 0 {
                if text[j] == "(" { depth += 1 } else if text[j] == ")" { depth -= 1 }
                j = text.index(after: j)
            }
            let call = String(text[hit.upperBound..<j])
            i = j
            guard let n = call.range(of: "name: \"") else { continue }
            let name = String(call[n.upperBound...].prefix { $0 != "\"" })
            var deps: Set<String> = []
            if let d = call.range(of: "dependencies: [") {
                var depthB = 1, k = d.upperBound
                while k < call.endIndex && depthB > 0 {
                    if call[k] == "[" { depthB += 1 } else if call[k] == "]" { depthB -= 1 }
                    k = call.index(after: k)
                }
                // Quoted names outside .product(...) are the package's own targets.
                var list = String(call[d.upperBound..<k])
                while let p = list.range(of: ".product(") {
                    let close = list[p.upperBound...].firstIndex(of: ")") ?? list.endIndex
                    list.removeSubrange(p.lowerBound..<list.index(after: close))
                }
                for part in list.split(separator: "\"", omittingEmptySubsequences: false).enumerated() where part.offset % 2 == 1 { deps.insert(String(part.element)) }
            }
            graph[name] = deps
        }
        return graph
    }

    static func closure(_ name: String, _ graph: [String: Set<String>]) -> Set<String> {
        var seen: Set<String> = [], todo = [name]
        while let n = todo.popLast() {
            for d in graph[n] ?? [] where seen.insert(d).inserted { todo.append(d) }
        }
        return seen
    }

    /// Issue 30: test suites named unlike their files were hard to find (and the lab's `--filter RealVMTests` took
    /// the other suites of RealVMTests.swift through their ids' file names). One suite per file, named as it.
    @Test func eachSuiteIsInAFileOfItsName() throws {
        let tests = Self.root.appendingPathComponent("Tests")
        var wrong: [String] = []
        for f in FileManager.default.enumerator(atPath: tests.path)!.compactMap({ $0 as? String }) where f.hasSuffix(".swift") {
            let text = try String(contentsOf: tests.appendingPathComponent(f), encoding: .utf8)
            let base = URL(fileURLWithPath: f).deletingPathExtension().lastPathComponent
            for m in text.matches(of: /(?m)^(?:@Suite[^\n]*\s+)?struct (\w+(?:Tests|Checks))\b/) where String(m.1) != base {
                wrong.append("Tests/\(f): \(m.1)")
            }
        }
        #expect(wrong.isEmpty, "suites in a file of another name:\n\(wrong.joined(separator: "\n"))")
    }

    @Test func tiersRunOneWay() throws {
        let g = try Self.localGraph()
        try #require(g["HostTracing"] != nil && g["Exporter"] != nil && g["Inspector"] != nil, "Package.swift read: \(g.keys.sorted())")
        #expect(!Self.closure("HostTracing", g).contains("Inspector"), "HostTracing reaches the inspector: \(Self.closure("HostTracing", g))")
        #expect(!Self.closure("HostTracing", g).contains("CZlib"))
        #expect(!Self.closure("Exporter", g).contains("Inspector") && !Self.closure("Exporter", g).contains("CZlib"),
                "the exporter links the inspector or zlib: \(Self.closure("Exporter", g))")
        // And no source file of the tracing library imports the inspector's modules.
        let dir = Self.root.appendingPathComponent("Sources/HostTracing")
        for file in try FileManager.default.contentsOfDirectory(atPath: dir.path) where file.hasSuffix(".swift") {
            let text = try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)
            #expect(!text.contains("import Inspector") && !text.contains("import CZlib"), "\(file) imports the inspector's side")
        }
    }

    /// Each `X` → A, B row of docs/architecture.md's module table names exactly X's dependencies among the
    /// package's own targets (packages such as swift-prometheus may stand beside them).
    @Test func theArchitectureTableIsThePackagesGraph() throws {
        let g = try Self.localGraph()
        let doc = try String(contentsOf: Self.root.appendingPathComponent("docs/architecture.md"), encoding: .utf8)
        var checked = 0
        for line in doc.split(separator: "\n") where line.hasPrefix("| `") {
            let cell = line.dropFirst(2).prefix { $0 != "|" }
            guard let arrow = cell.range(of: " → ") else { continue }
            let name = cell[..<arrow.lowerBound].trimmingCharacters(in: CharacterSet(charactersIn: "` "))
            let listed = cell[arrow.upperBound...].split(separator: ",").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "` ")) }
            guard listed != ["all"], let deps = g[name] else { continue }
            let local = Set(listed.filter { g[$0] != nil })
            #expect(local == deps, "docs/architecture.md: \(name) → \(local.sorted()); Package.swift: \(deps.sorted())")
            checked += 1
        }
        #expect(checked >= 8, "rows with arrows checked: \(checked)")
    }
}
