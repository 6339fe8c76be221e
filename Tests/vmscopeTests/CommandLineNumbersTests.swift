import Foundation
import ProcessSupport
import Testing

/// Numbers from the command line at and past their edges (issue 19): each is refused with a message naming the
/// option, or taken; none makes vmscope trap (it did for `--dump-at 1e11` and `--duration 1e300`).
struct CommandLineNumbersTests {
    /// A real recording, so `replay` gets as far as using the number.
    static let recording = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../FuzzTargetsTests/Corpus/recording/short.jsonl.gz").standardized.path

    static let cases: [[String]] = [
        ["record", "/nonexistent.sock", "-o", "/nonexistent/x.jsonl.gz", "--duration", "1e300"],
        ["record", "/nonexistent.sock", "-o", "/nonexistent/x.jsonl.gz", "--duration", "1e11"],
        ["record", "/nonexistent.sock", "-o", "/nonexistent/x.jsonl.gz", "--duration", "1e11h"],
        ["record", "/nonexistent.sock", "-o", "/nonexistent/x.jsonl.gz", "--duration", "-1s"],
        ["record", "/nonexistent.sock", "-o", "/nonexistent/x.jsonl.gz", "--duration", "nan"],
        ["record", "/nonexistent.sock", "-o", "/nonexistent/x.jsonl.gz", "--faults", "-1"],
        ["replay", recording, "--dump-at", "1e11"],
        ["replay", recording, "--dump-at", "1e300"],
        ["replay", recording, "--dump-at", "inf"],
        ["replay", recording, "--speed", "1e300"],
        ["replay", recording, "--speed", "nan"],
        ["replay", recording, "--faults", "99999999999999999999"],
        ["ctl", "/nonexistent.sock", "query-vm", "--timeout", "1e300"],
        ["ctl", "/nonexistent.sock", "query-vm", "--timeout", "nan"],
        ["ctl", "/nonexistent.sock", "query-vm", "--timeout", "-1"],
        ["ctl", "/nonexistent.sock", "--events", "--count", "-5"],
        ["ctl", "/nonexistent.sock", "read-memory", #"{"gpa":1e300,"size":18446744073709551616}"#],
        ["snapshot", "/nonexistent.sock", "--faults", "-1"],
        ["snapshot", "/nonexistent.sock", "--faults", "9223372036854775807"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--vcpus", "-1"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--vcpus", "9223372036854775807"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--ram", "1e300"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--ram", "18446744073709551615"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--ram", "16777216T"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--shared-alias-bit", "-1"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--shared-alias-bit", "64"],
        ["vmm", "--socket", "/nonexistent/x.sock", "--shared-alias-bit", "9223372036854775807"],
        ["demo", "--vcpus", "-3"],
        ["demo", "--ram", "0"],
        ["lab", "run", "--socket", "/nonexistent/x.sock", "--lab-cpus", "-1"],
        ["lab", "run", "--socket", "/nonexistent/x.sock", "--boot-timeout", "1e300"],
        ["lab", "exec", "--timeout", "nan", "--", "true"],
        ["trace", "1", "--buffer-kib", "8"],
        ["trace", "1", "--buffer-kib", "-1"],
        ["trace", "1", "--buffer-kib", "262145"],
        ["trace", "1", "--buffer-kib", "99999999999999999999"],
        ["trace", "1", "--read-interval", "0"],
        ["trace", "1", "--read-interval", "-1"],
        ["trace", "1", "--read-interval", "10001"],
        ["trace", "1", "--read-interval", "18446744073709551616"],
    ]

    @Test(arguments: cases)
    func anEdgeNumberIsRefusedByNameOrTakenNeverATrap(_ args: [String]) throws {
        let r = try runProcess(Binary.url.path, args)
        #expect(r.status < 128, "\(args) killed by signal \(r.status - 128): \(r.stderr)")
        #expect(r.status != 0, "\(args) should not succeed")
        #expect(!r.stderr.isEmpty && !r.stderr.contains("Fatal error"), "\(args): \(r.stderr)")
        // Refused for the number, by the option's name (not for the missing socket or file further on).
        if args.count >= 2, args[args.count - 2].hasPrefix("--") {
            #expect(r.stderr.contains(args[args.count - 2]), "\(args): \(r.stderr)")
        }
    }
}

