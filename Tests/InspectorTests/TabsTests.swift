import ControlProtocol
import Foundation
import Testing
@testable import Inspector

/// Issue 27, item 9: at 80×24 four 38-column panes cut words, the legend and the exit counts. Below 100 columns the
/// views are tabs, one at a time at full width; Tab and 1-4 move between them; from 100 columns, all four.
struct TabsTests {
    @Test func below100ColumnsOneViewAtATimeWithTabs() throws {
        let m = try fixtureModel()
        var u = ui()
        let narrow = Renderer().render(m, u, width: 80, height: 24)
        #expect(narrow.lines[1].hasPrefix("[1 GFN map]  2 Faults "), "\(narrow.lines[1])")
        #expect(narrow.text.contains("┌─ 1 GFN map") && !narrow.text.contains("┌─ 2 Faults") && !narrow.text.contains("┌─ 4 vCPUs"), "\(narrow.text)")
        // The map's legend fits whole at full width.
        #expect(narrow.text.contains("█ private ░ shared"), "\(narrow.text)")
        _ = u.handle(.tab)
        let faults = Renderer().render(m, u, width: 80, height: 24)
        #expect(faults.lines[1].contains("[2 Faults]") && faults.text.contains("┌─ 2 Faults") && !faults.text.contains("┌─ 1 GFN map"))
        _ = u.handle(.char("4"))
        #expect(Renderer().render(m, u, width: 99, height: 24).text.contains("┌─ 4 vCPUs"))
        let wide = Renderer().render(m, u, width: 100, height: 30).text
        #expect(["┌─ 1 GFN map", "┌─ 2 Faults", "┌─ 3 Memslots", "┌─ 4 vCPUs"].allSatisfy { wide.contains($0) } && !wide.contains("Tab/1-4"), "\(wide)")
    }
}
