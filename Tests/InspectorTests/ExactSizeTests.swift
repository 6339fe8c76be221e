import Inspector
import Schema
import Testing

/// What an action will do is said exactly (issue 27, item 12: the prompt said `Convert 4.3M` for 0x440000 bytes).
struct ExactSizeTests {
    @Test func actionsSayExactSizes() {
        #expect(Fmt.exactSize(0x440000) == "4352K")
        #expect(Fmt.exactSize(1 << 20) == "1M" && Fmt.exactSize(0x1800) == "6K" && Fmt.exactSize(4097) == "4097B")
        #expect(InspectorAction.convert(gpa: 0x100000, size: 0x440000, to: .shared).description == "convert 4352K at 0x100000 to shared")
    }
}
