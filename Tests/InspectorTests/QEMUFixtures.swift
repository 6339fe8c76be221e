@testable import Schema
import ControlProtocol
import Foundation
import Testing
@testable import Inspector

/// Text QEMU 7.2 printed, kept byte for byte (CRLF line ends included).
func qemuFixture(_ name: String) throws -> String {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(name)")
    return try String(contentsOf: url, encoding: .utf8)
}

/// A QEMU that answers from a table, recording what it was asked.
final class CannedQEMU: @unchecked Sendable {
    var replies: [String: JSON]
    var asked: [String] = []
    init(_ replies: [String: JSON]) { self.replies = replies }

    func execute(_ name: String, _ args: JSON?) throws -> JSON {
        let key = name == "human-monitor-command" ? "hmp:" + (args?["command-line"]?.stringValue ?? "")
            : name == "query-stats" ? "stats:" + (args?["target"]?.stringValue ?? "")
            : name == "qom-get" ? "qom:" + (args?["path"]?.stringValue ?? "") + "." + (args?["property"]?.stringValue ?? "") : name
        asked.append(key)
        guard let r = replies[key] else { throw ControlClientError.command(errorClass: "CommandNotFound", desc: "no \(key)") }
        return r
    }

    static func greeting(_ major: Int, _ minor: Int) throws -> JSON {
        try JSON.parse(#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": \#(minor), "major": \#(major)}, "package": ""}, "capabilities": ["oob"]}}"#)
    }
}

