import ControlProtocol
import Testing
@testable import Inspector

/// Traced conversion steps on the faults pane (issue 29): on the row of the memory fault whose exit asked for the
/// conversion, in its details, and as a histogram behind `L`.
struct ConversionLatencyViewTests {
    /// The fixture's kernel record (#6, vCPU 1) as the trace corroborated it: its exit traced at `exitNs`.
    static func model(exitNs: UInt64) throws -> InspectorModel {
        var m = try fixtureModel()
        let left = m.corroborate([TracedExit(timeNs: exitNs, vcpu: 1, gpa: nil, exit: .memoryFault)])
        #expect(left.isEmpty, "the fixture's memory-fault row was not corroborated")
        return m
    }

    @Test func theStepsLandOnTheRowOfTheExitThatAskedAndInTheHistogram() throws {
        var m = try Self.model(exitNs: 1_499_990_000)
        let steps: [ConversionStep: UInt64] = [.request: 20_000, .convert: 40_000, .reentry: 5_000]
        let otherTime = m.attach(conversionSteps: steps, memoryFaultExitNs: 1_499_990_001, vcpu: 1)
        let otherVCPU = m.attach(conversionSteps: steps, memoryFaultExitNs: 1_499_990_000, vcpu: 0)
        #expect(!otherTime && !otherVCPU, "attached to another exit's row")
        let attached = m.attach(conversionSteps: steps, memoryFaultExitNs: 1_499_990_000, vcpu: 1)
        #expect(attached)
        m.conversionLatency.add(steps)
        var u = ui(focus: .faults)
        let screen = Renderer().render(m, u, width: 240, height: 48)
        let row = try #require(screen.lines.first { $0.contains("kernel+trace paused") })
        #expect(row.contains("conv 65 µs"), "\(row)")
        #expect(screen.lines.contains { $0.contains("conversion traced: request 20 µs · convert 40 µs · re-entry 5.0 µs") },
                "\(screen.lines.joined(separator: "\n"))")
        u.showLatency = true
        let histogram = Renderer().render(m, u, width: 240, height: 48).lines
        #expect(histogram.contains { $0.contains("conversion latency, traced") })
        let request = try #require(histogram.first { $0.contains("request ") && $0.contains(" n ") })
        #expect(request.contains("n      1") && request.contains("p50 <32 µs"), "\(request)")
        #expect(histogram.contains { $0.contains("re-entry") && $0.contains("p99 <8.1 µs") })
    }

    @Test func withoutTimedConversionsTheHistogramSaysWhatItNeeds() throws {
        var u = ui(focus: .faults)
        u.showLatency = true
        let lines = Renderer().render(try fixtureModel(), u, width: 240, height: 48).lines
        #expect(lines.contains { $0.contains("no conversion timed yet") })
    }

    @Test func lTogglesTheHistogram() throws {
        var u = ui(focus: .faults)
        _ = u.handle(.char("L"))
        #expect(u.showLatency)
        _ = u.handle(.char("L"))
        #expect(!u.showLatency)
    }
}
