import ArgumentParser
import Benchmarks
import Foundation

@main
struct VMScopeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vmscope-bench",
        abstract: "vmscope's benchmarks: medians over repeated runs, with baselines measured in the same run.",
        discussion: "Run from a release build: swift run -c release vmscope-bench")

    @Flag(help: "Print {\"machine\", \"results\"} as JSON.") var json = false
    @Flag(help: "Tiny sizes, to check that every benchmark still runs.") var smoke = false
    @Option(help: "Only the groups named (attr, inspector, convert, live, keys, trace, cpu, qemu-poll, libvirt-poll, exporter, peers; rtt: peers' protocol round trips alone; tracecost: tracing's cost to a guest, in the lab); repeatable.") var only: [String] = []
    @Option(help: "Also write the results as a Markdown table to this file (docs/benchmarks.md).")
    var markdown: String?
    @Option(help: ArgumentHelp("Decode the callgrind workload once by this path (general, tree, model, tracepoints, trace-json, pairing, top, attr-walk) and exit.", visibility: .hidden))
    var callgrindDecode: String?
    @Option(help: ArgumentHelp("Make KVM exits at this rate a second (0: as fast as it can) once --gate exists, for --seconds; print how many (the tracers' rate sweep).", visibility: .hidden))
    var generateExits: Double?
    @Option(help: ArgumentHelp("The file whose existence starts --generate-exits.", visibility: .hidden)) var gate: String?
    @Option(help: ArgumentHelp("How long --generate-exits makes exits.", visibility: .hidden)) var seconds: Double = 5

    func run() throws {
        if let path = callgrindDecode {
            guard let workload = try CallgrindWorkload(path: path) else { throw ValidationError("no callgrind workload \(path)") }
            let warm = warmDecodeWorkload(workload)
            let counted = callgrindDecodeWorkload(workload)
            guard counted == warm else { throw ValidationError("the workload gave \(warm), then \(counted)") }
            print(counted)
            return
        }
        if let rate = generateExits {
            guard let gate, rate.isFinite, rate >= 0, seconds.isFinite, seconds > 0, seconds <= 3600 else {
                throw ValidationError("--generate-exits needs --gate, a finite rate ≥ 0 and --seconds from 0 to 3600")
            }
            let made = try runExitGenerator(rate: rate, seconds: seconds, gate: gate) {
                FileHandle.standardError.write(Data("vmscope-bench: exit generator ready, pid \(getpid())\n".utf8))
            }
            print("exits \(made.exits) seconds \(made.seconds)")
            return
        }
        let sizes = smoke ? BenchSizes.smoke : .full
        var results: [BenchResult] = []
        func wanted(_ group: String) -> Bool { only.isEmpty || only.contains(group) }
        if wanted("attr") { results += attributeMapBenchmarks(sizes, callgrindExecutable: CommandLine.arguments[0]) }
        if wanted("inspector") { results += inspectorBenchmarks(sizes, callgrindExecutable: CommandLine.arguments[0]) }
        if wanted("convert") { results += try conversionBenchmarks(sizes) }
        if wanted("live") { results += try liveBenchmarks(sizes) }
        if wanted("keys") { results += try keyLatencyBenchmarks(sizes) }
        if wanted("trace") { results += try traceBenchmarks(sizes, callgrindExecutable: CommandLine.arguments[0]) }
        if wanted("cpu") {
            // The inspector measured is the `vmscope` built next to this benchmark.
            let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            results += try inspectorCPUBenchmarks(sizes, vmscope: dir + "/vmscope")
        }
        if wanted("qemu-poll") {
            let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            results += try qemuPollingBenchmarks(sizes, vmscope: dir + "/vmscope")
        }
        if wanted("libvirt-poll") {
            let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            results += try libvirtPollingBenchmarks(sizes, vmscope: dir + "/vmscope")
        }
        if only.contains("peers") || only.contains("rtt") {
            // Against kvm_stat (issue 32): only when asked for, since on a PVM host it runs itself again inside the lab.
            // `rtt` is the protocol part alone.
            let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            // Here only: the lab runs this group again for kvm_stat alone.
            if !insideTheLab { results += try protocolRoundTripBenchmarks(sizes) }
            if only.contains("peers") { results += try peersBenchmarks(sizes, vmscope: dir + "/vmscope", bench: CommandLine.arguments[0]) }
        }
        if only.contains("tracecost") {
            // Issue 29's tracing cost: only when asked for (it boots the lab and runs itself again inside it).
            let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            results += try labTracingCostBenchmarks(sizes, vmscope: dir + "/vmscope", bench: CommandLine.arguments[0])
        }
        if wanted("exporter") {
            let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path
            results += try exporterBenchmarks(sizes, vmscope: dir + "/vmscope")
        }
        let report = BenchReport(machine: .current(), results: results)
        if json {
            print(report.json())
        } else {
            for r in results {
                let extra = [r.target.map { "target \($0)" + (r.met == false ? " MISSED" : "") },
                             r.ratio.map { String(format: "%.3g× %@", $0, r.baseline ?? "") }, r.note]
                    .compactMap { $0 }.joined(separator: "; ")
                print("\(r.name.padding(toLength: 30, withPad: " ", startingAt: 0)) \(String(format: "%12.4g", r.value)) \(r.unit.padding(toLength: 4, withPad: " ", startingAt: 0))  \(extra)")
            }
        }
        if let markdown {
            let command = "swift run -c release vmscope-bench --markdown \(markdown)" + (smoke ? " --smoke" : "")
                + only.map { " --only \($0)" }.joined()
            let text = report.markdown(command: command)
            let url = URL(fileURLWithPath: markdown)
            if url.lastPathComponent == "benchmarks.md" {
                // The tables of groups run apart stay, until their next run.
                let old = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
                try BenchSections.carryingOver(from: old, into: text, ran: only).write(to: url, atomically: true, encoding: .utf8)
            } else {
                try text.write(to: url, atomically: true, encoding: .utf8)
                // A group run apart also goes into the main file beside this one (issue 32: docs/benchmarks.md holds
                // the peers table), as a section the next run of the group replaces.
                let main = url.deletingLastPathComponent().appendingPathComponent("benchmarks.md")
                for name in BenchSections.groups where only.contains(name) {
                    if let old = try? String(contentsOf: main, encoding: .utf8) {
                        try BenchSections.setting(name, to: BenchSections.section(name, from: text), in: old)
                            .write(to: main, atomically: true, encoding: .utf8)
                    }
                }
            }
        }
    }
}
