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
