import Foundation
import Testing

/// Issue 30: the VMM is split at its exits. The façade stays small, the runner holds no VMM, and every lock in the
/// VMM is taken for a scope (`withLock`), never by a `lock()` and an `unlock()` paired by hand.
@Suite struct VMMShapeTests {
    static let vmm = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Sources/VMM")

    static func files() throws -> [(path: String, text: String)] {
        let names = FileManager.default.enumerator(atPath: vmm.path)!.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
        return try names.sorted().map { ("Sources/VMM/\($0)", try String(contentsOf: vmm.appendingPathComponent($0), encoding: .utf8)) }
    }

    @Test func theFacadeIsAtMostThreeHundredLines() throws {
        let text = try String(contentsOf: Self.vmm.appendingPathComponent("ReferenceVMM.swift"), encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).count
        #expect(lines <= 300, "ReferenceVMM.swift has \(lines) lines")
    }

    @Test func eachExitKindHasItsOwnHandlerFile() throws {
        let exits = try Self.files().filter { $0.path.hasPrefix("Sources/VMM/Exits/") }
        let handlers = exits.filter { $0.text.contains(/final class \w+: ExitHandler/) }
        #expect(handlers.count >= 5, "handlers: \(handlers.map(\.path))")
        for h in handlers {
            #expect(h.text.components(separatedBy: ": ExitHandler").count == 2, "\(h.path) holds more than one handler")
        }
    }

    @Test func noBackReferenceAndNoLockPairedByHand() throws {
        var found: [String] = []
        for (path, text) in try Self.files() {
            for (n, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let code = line.split(separator: "//", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
                if code.contains(/\bunowned\b/) || code.contains(/\bvmm\b\s*:\s*ReferenceVMM/) {
                    found.append("\(path):\(n + 1): \(line)")
                }
                // The one scoped helper (GuestMemory.withLock) is the only place a lock is taken by name.
                if code.contains(/\.(lock|unlock)\(\)/) && !(path.hasSuffix("GuestMemory.swift") && code.contains(/^\s*(lock\.lock\(\)|defer \{ lock\.unlock\(\) \})\s*$/)) {
                    found.append("\(path):\(n + 1): \(line)")
                }
            }
        }
        #expect(found.isEmpty, "\n\(found.joined(separator: "\n"))")
    }
}
