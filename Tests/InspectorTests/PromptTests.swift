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

/// `--ascii` means ASCII in every cell (issue 27, item 13: it still drew │ and ·).
struct ASCIIScreenTests {
    @Test func everyCellIsASCII() throws {
        var m = try fixtureModel()
        m.heatMapNote = "a note · with a dot"
        for focus in [Pane.map, .faults, .memslots, .vcpus] {
            for (w, h) in [(80, 24), (160, 48)] {
                var u = ui(focus: focus)
                u.ascii = true
                let text = Renderer(ascii: true, nowNs: 2_000_000_000).render(m, u, width: w, height: h).text
                #expect(text.unicodeScalars.allSatisfy { $0.isASCII }, "\(focus) \(w)x\(h):\n\(text)")
            }
        }
    }
}

/// The selected fault stays selected as new ones arrive (issue 27, item 7: it drifted #99 → #127 → #158).
struct PinnedFaultTests {
    func record(_ seq: UInt64) -> FaultRecord {
        FaultRecord(seq: seq, timeNs: seq * 1_000_000, vcpu: 0, gpa: 0x100000 + seq * 4096, flags: 8, isPrivate: true,
                    access: .read, source: .vmm, exit: .mmio, attribute: .shared, slot: 0, action: .converted)
    }

    @Test func theCursorFollowsItsRecord() {
        var m = InspectorModel()
        m.apply(faults: FaultBatch(records: (1...100).map(record), dropped: 0), nowNs: 1)
        var u = ui(focus: .faults)
        u.fit(m, width: 160, height: 48)
        for _ in 0..<5 { _ = u.handle(.char("k")) }
        u.fit(m, width: 160, height: 48)
        #expect(u.faultCursor == 5 && u.pinnedFaultSeq == 95, "cursor \(u.faultCursor) pinned \(u.pinnedFaultSeq.map(String.init) ?? "-")")
        m.apply(faults: FaultBatch(records: (101...120).map(record), dropped: 0), nowNs: 2)
        u.fit(m, width: 160, height: 48)
        #expect(u.faultCursor == 25, "still on #95: \(u.faultCursor)")
        let text = Renderer().render(m, u, width: 160, height: 48).text
        #expect(text.contains("#95 flags"), "the details are #95's:\n\(text)")
        // Back to the newest: it follows the stream again.
        _ = u.handle(.char("G"))
        u.fit(m, width: 160, height: 48)
        #expect(u.faultCursor == 0 && u.pinnedFaultSeq == nil)
    }
}

/// The faults pane has column headings (issue 27, item 9: what is `8759ms` measured from?).
struct FaultColumnsTests {
    @Test func theListHasHeadingsOverItsColumns() throws {
        let m = try fixtureModel()
        for (w, h) in [(80, 24), (160, 48)] {
            let lines = Renderer().render(m, ui(focus: .faults), width: w, height: h).text.split(separator: "\n").map(String.init)
            let heading = try #require(lines.firstIndex { $0.contains("seq") && $0.contains("gpa") && $0.contains("want") }, "\(w)x\(h):\n\(lines.joined(separator: "\n"))")
            // The heading sits above the rows: the first fault row comes after it.
            #expect(lines.firstIndex { $0.contains("0x00101000") }.map { $0 > heading } == true, "\(w)x\(h)")
        }
        let wide = Renderer.faultColumns(width: 160)
        #expect(wide.contains("t ms") && wide.contains("source/exit"))
    }
}
