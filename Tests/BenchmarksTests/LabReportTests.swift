import Foundation
import Testing
@testable import Benchmarks

/// A lab job's JSON comes over the lab's console, which carries the kernel's messages too: a full peers run was
/// lost to one ("the lab run failed (exit 0)") where the smoke run parsed.
struct LabReportTests {
    @Test func theKernelsConsoleLinesAreLeftOutAndTheReportParses() throws {
        let printed = """
        [    7.260508] NOTICE: Automounting of tracing to debugfs is deprecated and will be removed in 2030
        {
          "results" : [
        [  118.763139] hrtimer: interrupt took 1234567 ns
            { "name" : "a", "value" : 1.5, "unit" : "ms" }
          ]
        }
        """
        let text = labReport(printed)
        #expect(!text.contains("NOTICE") && !text.contains("hrtimer") && text.contains("\"results\" : ["))
        struct Report: Decodable { var results: [BenchResult] }
        let start = try #require(text.firstIndex(of: "{"))
        let report = try JSONDecoder().decode(Report.self, from: Data(text[start...].utf8))
        #expect(report.results.map(\.name) == ["a"])
        #expect(throws: (any Error).self) { try JSONDecoder().decode(Report.self, from: Data(printed[printed.firstIndex(of: "{")!...].utf8)) }
    }
}
