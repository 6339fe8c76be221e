import Inspector
import Schema
import Testing

/// The status bar at 80 and 120 columns (issue 27, item 2): a dead VM never looks alive.
struct StatusBarTests {
    @Test(arguments: [80, 120])
    func disconnectedIsAlwaysShownAndTheOldRateGoes(width: Int) throws {
        var m = try fixtureModel()
        m.eventRate = 4321
        m.connection = .disconnected("/tmp/vmscope-demo-abcdef/vm.sock: connect: Connection refused (the VMM went away)")
        let bar = Renderer().render(m, ui(), width: width, height: 30).text.split(separator: "\n").first.map(String.init) ?? ""
        #expect(bar.contains("disconnected"), "\(bar)")
        #expect(!bar.contains("4321 ev/s"), "a rate from before the VMM went: \(bar)")
        #expect(bar.contains("policy convert"), "\(bar)")
    }
}
