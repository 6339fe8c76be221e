import Foundation
import Testing

/// Issue 30: an errno is named, never written as a number (`errno == 22`, `bitPattern: -38`): a reader sees
/// EINVAL and ENOSYS, and a grep for a name finds every place that handles it.
@Suite struct ErrnoSpellingTests {
    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources")

    @Test func noErrnoIsANumberInTheSources() throws {
        let patterns = [/errno\)?\s*[!=]=\s*-?[0-9]+\b/, /bitPattern:\s*-[0-9]+\)/, /errnoName\s*[!=]=\s*-?[0-9]+/]
        var found: [String] = []
        let files = FileManager.default.enumerator(atPath: Self.sources.path)!.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
        #expect(files.count > 50)
        for f in files {
            let text = try String(contentsOf: Self.sources.appendingPathComponent(f), encoding: .utf8)
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                for re in patterns where line.contains(re) { found.append("Sources/\(f):\(n + 1): \(line.trimmingCharacters(in: .whitespaces))") }
            }
        }
        #expect(found.isEmpty, "errno written as a number:\n\(found.joined(separator: "\n"))")
    }
}
