import Foundation
import Testing

/// Issue 30: docs/architecture.md's module table says what each module depends on ("`X` → A, B"); it is checked
/// against Package.swift, so a new dependency (or a tier running backwards) shows up in the doc or fails here.
@Suite struct ArchitectureDocTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Each target of Package.swift and the package's own targets among its dependencies (products left out).
    static func packageDependencies() throws -> [String: Set<String>] {
        let text = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        var targets: [String: Set<String>] = [:]
        let declarations = text.matches(of: /\.(?:target|executableTarget|systemLibrary)\(name: "([A-Za-z-]+)"(?:, dependencies: \[([^\]]*)\])?/)
        for d in declarations {
            // `.product(name: "X", package: "y")` names another package's product: not one of ours.
            let deps = String(d.2 ?? "").replacing(/\.product\([^)]*\)/, with: "")
            targets[String(d.1)] = Set(deps.matches(of: /"([A-Za-z-]+)"/).map { String($0.1) })
        }
        return targets
    }

    @Test func theModuleTableSaysWhatPackageSwiftSays() throws {
        let package = try Self.packageDependencies()
        #expect(package.count >= 15 && package["Inspector"]?.contains("HostTracing") == true, "\(package)")
        let doc = try String(contentsOf: Self.root.appendingPathComponent("docs/architecture.md"), encoding: .utf8)
        var documented: [String: Set<String>] = [:]
        // "| `A`, `B` (C) → X, Y |": the modules named in the first cell, each depending on X and Y ("all": whatever
        // Package.swift says); a second row for a module already described adds nothing.
        for row in doc.matches(of: /\n\| ((?:`[A-Za-z-]+`(?:, )?)+)(?: \([^)]*\))?(?: → ([^|]+?))? \|/) {
            let deps = (row.2.map(String.init) ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            for m in String(row.1).matches(of: /`([A-Za-z-]+)`/) {
                let name = String(m.1)
                guard package[name] != nil, documented[name] == nil else { continue }
                documented[name] = deps == ["all"] ? package[name] : Set(deps.filter { package[$0] != nil })
            }
        }
        for (name, deps) in package.sorted(by: { $0.key < $1.key }) {
            guard let said = documented[name] else { Issue.record("docs/architecture.md has no row for \(name)"); continue }
            #expect(said == deps, "\(name): the doc says \(said.sorted()), Package.swift \(deps.sorted())")
        }
    }
}
