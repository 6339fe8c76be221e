import ControlProtocol
import Foundation
import HostTracing
import Testing
@testable import Inspector

/// Issue 27, item 10: the hex dump showed the first 256 bytes of the page and any key closed it.
struct HexDumpScrollTests {
    @Test func theDumpScrollsOverTheWholePageAndClosesWithQ() {
        let m = ControlConsentTests.model(qemu: false)
        var u = ui()
        u.fit(m, width: 120, height: 30)
        let bytes = (0..<4096).map { UInt8($0 / 16 & 0xFF) }
        u.overlay = .hexDump(gpa: 0x100000, bytes: bytes)
        func shown() -> String { Renderer(ascii: false).render(m, u, width: 120, height: 30).text }
        #expect(shown().contains("0x00100000  00 00") && shown().contains("bytes 0-"), "\(shown())")
        _ = u.handle(.pageDown)
        #expect(shown().contains("0x00100100  10 10") && shown().contains("bytes 256-"), "\(shown())")
        _ = u.handle(.char("G"))
        #expect(shown().contains("0x00100ff0  ff ff") && shown().contains("-4095 of 4096"), "\(shown())")
        _ = u.handle(.char("a"))
        #expect(u.overlay != nil, "a key that means nothing here leaves it open")
        _ = u.handle(.char("q"))
        #expect(u.overlay == nil)
    }
}

extension HexDumpScrollTests {
    /// At the end of a scrolling dialog (G, or j held down), k moves it up at once: the scroll position stopped at
    /// the last line rather than at the last full page, so the first k presses after G changed nothing on screen.
    @Test func atTheEndKMovesAtOnce() throws {
        let m = ControlConsentTests.model(qemu: false)
        var u = ui()
        u.fit(m, width: 80, height: 24)
        func shown() -> String { Renderer(ascii: false).render(m, u, width: 80, height: 24).text }
        func firstShown(_ pattern: String) throws -> Int {
            let s = shown()
            let r = try #require(s.range(of: pattern, options: .regularExpression), "\(s)")
            return try #require(Int(s[r].prefix { $0.isNumber }), "\(s)")
        }
        u.overlay = .help
        _ = u.handle(.char("G"))
        let end = try firstShown(#"\d+-\d+ of \d+"#)
        for _ in 0..<5 { _ = u.handle(.char("j")) }
        #expect(try firstShown(#"\d+-\d+ of \d+"#) == end, "j past the end")
        _ = u.handle(.char("k"))
        #expect(try firstShown(#"\d+-\d+ of \d+"#) == end - 1, "k after G and j:\n\(shown())")

        u.overlay = .hexDump(gpa: 0x100000, bytes: (0..<4096).map { UInt8($0 / 16 & 0xFF) })
        _ = u.handle(.char("G"))
        _ = u.handle(.char("k"))
        let first = try firstShown(#"(?<=bytes )\d+-"#)
        #expect(first == 4096 - 16 * (24 - 4) - 16, "k after G in the dump:\n\(shown())")
    }
}
