import Foundation

/// What the inspector shows of a domain's XML: its vCPU pinning, memory backing, launch security (SEV, SEV-SNP,
/// TDX) and devices. Read with a small tag scanner, not a full XML parser (FoundationXML would make libxml2 a
/// dependency of every build): libvirt writes this XML itself, and anything the scanner does not understand is
/// left out, never guessed.
public struct DomainFacts: Sendable {
    public var vcpus: Int?
    public var memoryKiB: UInt64?
    /// `<vcpupin vcpu='0' cpuset='1'/>`: vCPU → host CPUs.
    public var pinning: [(vcpu: Int, cpuset: String)] = []
    /// The children of `<memoryBacking>`, each with its type where it has one (`source type='memfd'`, `hugepages`).
    public var memoryBacking: [String] = []
    /// `<launchSecurity type='sev-snp'>`; nil: none.
    public var launchSecurity: String?
    /// The devices, by kind, with how many of each (`disk 2`, `interface 1`).
    public var devices: [(kind: String, count: Int)] = []

    /// One tag: its name, attributes, whether it closes, its depth, and the text after it (up to the next tag).
    struct Tag {
        var name: String
        var attributes: [String: String]
        var closing: Bool
        var selfClosing: Bool
        var text: String
    }

    /// The tags of `xml`, in order (comments, declarations and anything malformed skipped). At most `limit` tags.
    static func tags(_ xml: String, limit: Int = 100_000) -> [Tag] {
        var out: [Tag] = []
        let s = Array(xml.utf8)
        var i = 0
        while i < s.count && out.count < limit {
            guard s[i] == UInt8(ascii: "<") else { i += 1; continue }
            guard let end = s[i...].firstIndex(of: UInt8(ascii: ">")) else { break }
            let body = s[(i + 1)..<end]
            var textEnd = end + 1
            while textEnd < s.count && s[textEnd] != UInt8(ascii: "<") { textEnd += 1 }
            let text = String(decoding: s[(end + 1)..<textEnd], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            i = end + 1
            guard let first = body.first, first != UInt8(ascii: "!"), first != UInt8(ascii: "?") else { continue }
            let closing = first == UInt8(ascii: "/")
            let selfClosing = body.last == UInt8(ascii: "/")
            var inner = String(decoding: body, as: UTF8.self)
            if closing { inner.removeFirst() }
            if selfClosing { inner.removeLast() }
            let name = String(inner.prefix { !$0.isWhitespace })
            guard !name.isEmpty else { continue }
            var attributes: [String: String] = [:]
            var rest = Substring(inner.dropFirst(name.count))
            while let eq = rest.firstIndex(of: "=") {
                let key = rest[..<eq].trimmingCharacters(in: .whitespaces)
                let afterEq = rest[rest.index(after: eq)...].drop { $0.isWhitespace }
                guard let quote = afterEq.first, quote == "'" || quote == "\"" else { break }
                let valueStart = afterEq.index(after: afterEq.startIndex)
                guard let close = afterEq[valueStart...].firstIndex(of: quote) else { break }
                attributes[key] = String(afterEq[valueStart..<close])
                rest = afterEq[afterEq.index(after: close)...]
            }
            out.append(Tag(name: name, attributes: attributes, closing: closing, selfClosing: selfClosing, text: text))
        }
        return out
    }

    public init() {}

    /// The facts of a domain XML (`virsh dumpxml`).
    public init(xml: String) {
        var path: [String] = []
        var deviceCounts: [String: Int] = [:]
        var deviceOrder: [String] = []
        for t in Self.tags(xml) {
            if t.closing {
                if let i = path.lastIndex(of: t.name) { path.removeSubrange(i...) }
                continue
            }
            let parent = path.last
            switch (parent, t.name) {
            case ("domain", "vcpu"): vcpus = Int(t.text)
            case ("domain", "memory"):
                if let v = UInt64(t.text) {
                    let unit = (t.attributes["unit"] ?? "KiB").lowercased()
                    let scale: UInt64 = switch unit { case "b", "bytes": 1; case "mib", "m": 1 << 20; case "gib", "g": 1 << 30; default: 1 << 10 }
                    memoryKiB = v.multipliedReportingOverflow(by: scale).overflow ? nil : v * scale / 1024
                }
            case ("cputune", "vcpupin"):
                if let v = t.attributes["vcpu"].flatMap(Int.init), let set = t.attributes["cpuset"] { pinning.append((v, set)) }
            case ("memoryBacking", let child):
                memoryBacking.append(t.attributes["type"].map { "\(child) \($0)" } ?? child)
            case ("domain", "launchSecurity"): launchSecurity = t.attributes["type"] ?? "unknown"
            case ("devices", let kind):
                if deviceCounts[kind] == nil { deviceOrder.append(kind) }
                deviceCounts[kind, default: 0] += 1
            default: break
            }
            if !t.selfClosing { path.append(t.name) }
            if path.count > 64 { path.removeFirst() }
        }
        devices = deviceOrder.map { ($0, deviceCounts[$0] ?? 0) }
    }

    /// One line: "2 vCPUs (0→1, 1→0-1), 256 MiB, backing memfd, launch security none; devices: serial 1, console 1".
    public var summary: String {
        var parts: [String] = []
        if let v = vcpus {
            parts.append("\(v) vCPU\(v == 1 ? "" : "s")" + (pinning.isEmpty ? " (unpinned)" : " (pinned " + pinning.map { "\($0.vcpu)→\($0.cpuset)" }.joined(separator: ", ") + ")"))
        }
        if let m = memoryKiB { parts.append(m % 1024 == 0 ? "\(m / 1024) MiB" : "\(m) KiB") }
        parts.append("memory backing " + (memoryBacking.isEmpty ? "default" : memoryBacking.joined(separator: ", ")))
        parts.append("launch security " + (launchSecurity ?? "none"))
        var line = parts.joined(separator: ", ")
        if !devices.isEmpty { line += "; devices: " + devices.map { "\($0.kind) \($0.count)" }.joined(separator: ", ") }
        return line
    }
}
