import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

struct ThemeTests {
    static var themesDirectory: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../themes").standardized.path
    }

    @Test func everyShippedThemeParsesAndCoversEveryRole() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: Self.themesDirectory).filter { $0.hasSuffix(".json") }
        #expect(Set(files).isSuperset(of: ["default.json", "high-contrast.json", "light.json", "mono.json"]))
        for f in files {
            let t = try Theme.parse(try String(contentsOfFile: Self.themesDirectory + "/" + f, encoding: .utf8), file: f)
            #expect(t.styles.count == Role.allCases.count, "\(f)")
        }
    }

    @Test func badThemesNameTheLine() throws {
        let good = try String(contentsOfFile: Self.themesDirectory + "/default.json", encoding: .utf8)
        let unknownRole = good.replacingOccurrences(of: "\"dialog\"", with: "\"dialogue\"")
        #expect(throws: Theme.LoadError.self) { try Theme.parse(unknownRole, file: "t.json") }
        do { _ = try Theme.parse(unknownRole, file: "t.json") } catch {
            let line = 1 + good.prefix(upTo: good.range(of: "\"dialog\"")!.lowerBound).filter { $0 == "\n" }.count
            #expect(error.line == line && error.reason.contains("dialogue"))
        }
        let brokenJSON = "{\n  \"name\": \"x\",\n  \"roles\": {\n    \"normal\": {\"fg\": }\n  }\n}\n"
        do { _ = try Theme.parse(brokenJSON, file: "b.json"); Issue.record("accepted") } catch {
            #expect(error.line == 4, "\(error)")
            #expect(error.description.hasPrefix("b.json:4:"))
        }
        let badColour = good.replacingOccurrences(of: "\"fg\": \"cyan\"", with: "\"fg\": \"teal\"")
        #expect(throws: Theme.LoadError.self) { try Theme.parse(badColour, file: "c.json") }
    }
}
