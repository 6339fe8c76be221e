import ControlProtocol
import Foundation
import Testing
@testable import Inspector

/// The traced map (issue 29): known pages drawn private or shared, the rest as unknown, and the view says where its
/// attributes come from and what it cannot know.
struct TracedMapViewTests {
    @Test func knownPagesAreDrawnAndTheRestIsUnknown() throws {
        var m = InspectorModel()
        // A trace that began after the VM: it saw [0x100, 0x200) made private and [0x200, 0x300) shared, and one refusal.
        m.apply(attributes: AttributeRuns(runs: [AttributeRun(gpa: 0x10_0000, size: 0x10_0000, isPrivate: true),
                                                 AttributeRun(gpa: 0x20_0000, size: 0x10_0000, isPrivate: false)],
                                          privateBytes: 0x10_0000, sharedBytes: 0x10_0000))
        m.tracedMap = .init(unknown: [0..<0x100], pages: 0x300, applied: 2, refused: 1, lastRefusal: "gfn 0x400-0x500 to private: ENOMEM", complete: false)
        m.connection = .connected("kernel tracepoints (vmscope-1)")
        #expect(m.mapPages == 0x300)
        var u = ui()
        u.totalPages = 0x300
        u.fit(m, width: 200, height: 60)
        let s = Renderer(nowNs: 1).render(m, u, width: 200, height: 60)
        let pane = try #require(Renderer.layout(width: 200, height: 60, ui: u)[.map])
        let note = Renderer.heatNote(m, width: pane.inner.width).joined(separator: " ")
        #expect(note.contains("private/shared from KVM's tracepoints") && note.contains("2 conversions, 1 refused")
                && note.contains("unknown pages: not converted since the trace began"), "\(note)")
        #expect(s.text.contains("· unknown"), "the legend names the unknown glyph: \(s.text)")
        // The grid: the first third unknown (·), then private (█), then shared (░).
        let (cols, rows) = Renderer.mapGrid(pane, noteLines: Renderer.heatNote(m, width: pane.inner.width).count)
        let cells = GFNMap.cells(runs: m.runs, totalPages: m.mapPages, geometry: MapGeometry(pagesPerCell: MapGeometry.fitting(totalPages: m.mapPages, columns: cols, rows: rows), firstCell: 0, columns: cols, rows: rows),
                                 recentFaults: m.recentFaults, nowNs: 1, backed: m.tracedMap!.unknown)
        let glyphs = cells.filter { !$0.outside }.map { GFNMap.glyph($0, ascii: false).0 }
        #expect(glyphs.first == "·" && glyphs.contains("█") && glyphs.last == "░", "\(String(glyphs))")
        // The cursor on an unknown page says so, never "outside RAM" nor a guess.
        u.cursorGFN = 0x10
        let cursor = Renderer(nowNs: 1).render(m, u, width: 200, height: 60).text
        #expect(cursor.contains("gfn 16 unknown (no conversion traced)"), "\(cursor)")
    }

    /// A guest's KVM_HC_MAP_GPA_RANGE the VMM has not answered yet: its pages drawn ◆, the legend and the cursor line
    /// say what the guest asked for, the note counts it beside the requests answered.
    @Test func aPendingGuestRequestIsDrawnWhereTheGuestAsked() throws {
        var m = InspectorModel()
        m.apply(attributes: AttributeRuns(runs: [AttributeRun(gpa: 0, size: 0x30_0000, isPrivate: true)], privateBytes: 0x30_0000, sharedBytes: 0))
        var t = InspectorModel.TracedMapState(unknown: [], pages: 0x300, applied: 5, refused: 0, lastRefusal: nil, complete: true)
        t.pendingRequests = [.init(gfns: 0x280..<0x281, toPrivate: false, requestedNs: 1)]
        t.answeredRequests = [.init("converted by the VMM", 4)]
        m.tracedMap = t
        var u = ui()
        u.totalPages = 0x300
        u.fit(m, width: 200, height: 60)
        u.cursorGFN = 0x280
        let s = Renderer(nowNs: 1).render(m, u, width: 200, height: 60).text
        #expect(s.contains("◆ asked"), "the legend: \(s)")
        #expect(s.contains("gfn 640 private · the guest asked for shared (KVM_HC_MAP_GPA_RANGE, pending)"), "the cursor line: \(s)")
        let pane = try #require(Renderer.layout(width: 200, height: 60, ui: u)[.map])
        let note = Renderer.heatNote(m, width: pane.inner.width).joined(separator: " ")
        #expect(note.contains("guest requests (KVM_HC_MAP_GPA_RANGE): 1 pending, 4 converted by the VMM"), "\(note)")
        u.cursorGFN = 0
        let away = Renderer(nowNs: 1).render(m, u, width: 200, height: 60)
        #expect(away.text.filter { $0 == "◆" }.count == 2, "one cell and the legend: \(away.text)")
        // Answered: no mark left.
        m.tracedMap?.pendingRequests = []
        #expect(!Renderer(nowNs: 1).render(m, u, width: 200, height: 60).text.contains("◆"))
    }
}
