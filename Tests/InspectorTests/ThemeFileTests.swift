import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

struct ThemeFileTests {
    let dir: String = {
        let d = NSTemporaryDirectory() + "vmscope-themes-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }()

    /// Issue 19: a 200 MB theme was read whole, a non-UTF-8 one dropped with no message, `"attrs": "bold"`
    /// accepted, and every theme in the directory parsed at each start.
    @Test func badThemeFilesAreRefusedByNameAndOnlyWhenAskedFor() throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = try String(contentsOfFile: ThemeTests.themesDirectory + "/default.json", encoding: .utf8)
        let huge = dir + "/huge.json"
        #expect(FileManager.default.createFile(atPath: huge, contents: nil))
        #expect(truncate(huge, 200 << 20) == 0)  // sparse: 200 MB that would take seconds and memory to read
        let latin1 = dir + "/latin1.json"
        try good.replacingOccurrences(of: "\"default\"", with: "\"caf\u{E9}\"").data(using: String.Encoding.isoLatin1)!.write(to: URL(fileURLWithPath: latin1))
        let attrs = dir + "/attrs.json"
        try good.replacingOccurrences(of: #""attrs": ["bold"]"#, with: #""attrs": "bold""#).write(toFile: attrs, atomically: true, encoding: .utf8)
        #expect(try String(contentsOfFile: attrs, encoding: .utf8).contains(#""attrs": "bold""#), "the fixture has a string attrs")

        let catalog = ThemeCatalog()
        for name in ["huge", "latin1", "attrs"] { catalog.offer(name, path: dir + "/\(name).json") }
        catalog.offer("default", path: ThemeTests.themesDirectory + "/default.json")
        // Nothing is read before it is asked for.
        #expect(["huge", "latin1", "attrs"].allSatisfy { catalog.problem($0) == nil })
        let started = Date()
        #expect(catalog["huge"] == nil)
        #expect(Date().timeIntervalSince(started) < 0.5)
        #expect(catalog.problem("huge") == "theme \(huge): \(200 << 20) bytes; a theme file is at most 64 KiB")
        #expect(catalog["latin1"] == nil)
        #expect(catalog.problem("latin1") == "theme \(latin1): not UTF-8 text")
        #expect(catalog["attrs"] == nil)
        #expect(catalog.problem("attrs")?.contains("attrs must be a list") == true, "\(catalog.problem("attrs") ?? "accepted")")
        #expect(catalog["default"] != nil && catalog.problem("default") == nil)
    }
}
