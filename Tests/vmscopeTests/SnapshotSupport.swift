@testable import Schema
import ControlProtocol
import Foundation
import Inspector
import ProcessSupport
import Testing

/// The repository's docs/snapshot.schema.json.
let snapshotSchema = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("../../docs/snapshot.schema.json").standardized.path

/// Validates a JSON document against docs/snapshot.schema.json with Python's jsonschema (Debian's
/// python3-jsonschema; .ci/run installs it). Returns the validator's complaint, or nil when it is valid.
func schemaComplaint(_ json: String) throws -> String? {
    let path = NSTemporaryDirectory() + "vmscope-snapshot-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"
    try json.write(toFile: path, atomically: true, encoding: .utf8)
    defer { unlink(path) }
    let script = """
        import json, sys, jsonschema
        schema = json.load(open(sys.argv[1]))
        jsonschema.Draft202012Validator.check_schema(schema)
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(json.load(open(sys.argv[2]))), key=str)
        for e in errors[:5]: print("/".join(map(str, e.absolute_path)) + ": " + e.message)
        sys.exit(1 if errors else 0)
        """
    let r = try runProcess("/usr/bin/python3", ["-c", script, snapshotSchema, path])
    if r.status == 0 { return nil }
    return r.stdout + r.stderr
}

let pythonJSONSchema = (try? runProcess("/usr/bin/python3", ["-c", "import jsonschema"]))?.status == 0

func parseJSON(_ text: String) throws -> JSON {
    var bytes = Array(text.utf8)
    return try JSON.parse(bytes: &bytes)
}

/// `S` in a pane: the JSON snapshot it says it wrote is valid against the schema and has origin `origin`;
/// returns its path.
func pressSAndCheckSnapshot(_ pane: TmuxPane, origin: String) throws -> String {
    pane.keys("S")
    let screen = pane.waitFor(5) { $0.contains("snapshot written: ") }
    let path = try #require(screen.components(separatedBy: "snapshot written: ").dropFirst().first?
        .split(separator: " ").first.map(String.init), "\(screen)")
    let snap = try String(contentsOfFile: path, encoding: .utf8)
    if pythonJSONSchema { #expect(try schemaComplaint(snap) == nil) }
    #expect(try parseJSON(snap)["origin"]?["kind"] == .string(origin))
    return path
}

/// The replay position in the status bar's "REPLAY ▶ 0:12.345 / 0:30.000", in seconds.
func timelinePosition(_ screen: String) -> Double? {
    guard let r = screen.range(of: #"REPLAY [▶‖] \d+:\d\d\.\d{3}"#, options: .regularExpression) else { return nil }
    let text = screen[r].split(separator: " ")[2]
    let parts = text.split(separator: ":")
    guard parts.count == 2, let m = Double(parts[0]), let s = Double(parts[1]) else { return nil }
    return m * 60 + s
}

