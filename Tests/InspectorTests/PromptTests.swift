import Schema
import Testing
@testable import Inspector

/// Prompts edit as readline does (issue 27, item 11): Ctrl-U inserted `^U`, `/` came prefilled with the old filter.
struct PromptTests {
    func typed(_ u: inout InspectorUI, _ text: String) { for c in text { _ = u.handle(.char(c)) } }

    @Test func ctrlUCtrlWAndHistory() {
        var u = ui()
        _ = u.handle(.char(":"))
        typed(&u, "goto 0x100000")
        _ = u.handle(.char("\u{17}"))                 // Ctrl-W: the word before the cursor
        #expect(u.prompt?.text == "goto ")
        _ = u.handle(.char("\u{15}"))                 // Ctrl-U: all of it, nothing inserted
        #expect(u.prompt?.text == "")
        _ = u.handle(.char("\u{01}"))                 // another control character is not text
        #expect(u.prompt?.text == "")
        typed(&u, "goto 0x200000")
        _ = u.handle(.enter)
        #expect(u.cursorGFN == 0x200)
        // Up brings the last command back; Down past the newest clears the line.
        _ = u.handle(.char(":"))
        _ = u.handle(.up)
        #expect(u.prompt?.text == "goto 0x200000")
        _ = u.handle(.down)
        #expect(u.prompt?.text == "")
        _ = u.handle(.escape)
        #expect(u.prompt == nil)
    }

    @Test func theFilterPromptStartsEmptyWithTheFilterInItsHistory() {
        var u = ui()
        _ = u.handle(.char("/"))
        typed(&u, "vcpu=0")
        _ = u.handle(.enter)
        #expect(u.faultFilter.text == "vcpu=0")
        _ = u.handle(.char("/"))
        #expect(u.prompt?.text == "", "not prefilled")
        _ = u.handle(.up)
        #expect(u.prompt?.text == "vcpu=0")
    }
}

