import Foundation
import FuzzTargets
import Testing

/// Every file of the fuzz corpus (seeds from real sessions, and each crash the fuzzer found, kept as a
/// regression) through its target, in the ordinary build: the targets' properties trap on a violation.
struct CorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Corpus").path
    static let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")

    static func files(_ target: FuzzTarget) -> [String] {
        let dir = corpus + "/" + target.rawValue
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted().map { dir + "/" + $0 }
    }

    @Test(arguments: [FuzzTarget.client, .theme, .recording, .rawTrace])
    func corpusRunsClean(target: FuzzTarget) throws {
        let files = Self.files(target)
        #expect(files.count >= 2, "the \(target) corpus is in Tests/FuzzTargetsTests/Corpus/\(target.rawValue)")
        for f in files { target.run(Array(try Data(contentsOf: URL(fileURLWithPath: f)))) }
    }

    @Test(.enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
    func serverCorpusRunsClean() throws {
        #expect(FuzzTarget.prepareServer() == nil)
        let files = Self.files(.server)
        #expect(files.count >= 3)
        for f in files { FuzzTarget.server.run(Array(try Data(contentsOf: URL(fileURLWithPath: f)))) }
    }
}
