import ControlProtocol

/// What a stock QEMU prints through `human-monitor-command`, read into the inspector's model.
///
/// The formats are QEMU's HMP output (checked on QEMU 7.2, `-accel kvm`); a line that does not parse is skipped,
/// never guessed at.
public enum QEMUText {
    /// One range of a flat view: `START-END (prio P, TYPE): NAME[ @OFFSET][ KVM]` (END inclusive).
    public struct FlatRange: Sendable, Equatable {
        public var start: UInt64
        public var size: UInt64
        public var type: String        // ram, rom, romd, ramd, i/o, nv-ram, ...
        public var name: String
        public var offset: UInt64?     // @OFFSET: where in the region this range starts
        /// Whether QEMU says KVM maps it (the accelerator's name after the range): a KVM memslot.
        public var kvm: Bool
    }

    /// The ranges of the flat view that `addressSpace` renders, from `info mtree -f`.
    public static func flatView(_ text: String, addressSpace: String = "memory") -> [FlatRange] {
        var ranges: [FlatRange] = []
        var spaces: [String] = []
        var inTarget = false
        for raw in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            let line = raw.drop { $0 == " " }
            if line.hasPrefix("FlatView #") {
                spaces = []
                inTarget = false
            } else if line.hasPrefix("AS \"") {
                let name = line.dropFirst(4).prefix { $0 != "\"" }
                spaces.append(String(name))
            } else if line.hasPrefix("Root memory region:") {
                inTarget = spaces.contains(addressSpace)
            } else if inTarget, let r = flatRange(line) {
                ranges.append(r)
            }
        }
        return ranges
    }

    static func flatRange(_ line: Substring) -> FlatRange? {
        guard let dash = line.firstIndex(of: "-"), let start = UInt64(line[..<dash], radix: 16) else { return nil }
        let rest = line[line.index(after: dash)...]
        guard let space = rest.firstIndex(of: " "), let end = UInt64(rest[..<space], radix: 16), end >= start,
              let open = rest.range(of: "(prio "), let close = rest.range(of: "): ") else { return nil }
        let attrs = rest[open.upperBound..<close.lowerBound].split(separator: ",").map { $0.trimmingSpaces }
        guard attrs.count >= 2 else { return nil }
        var words = rest[close.upperBound...].split(separator: " ").map(String.init)
        let kvm = words.last == "KVM"
        if kvm { words.removeLast() }
        var offset: UInt64?
        if let last = words.last, last.hasPrefix("@"), let o = UInt64(last.dropFirst(), radix: 16) {
            offset = o
            words.removeLast()
        }
        guard !words.isEmpty else { return nil }
        let (size, overflow) = (end - start).addingReportingOverflow(1)
        return FlatRange(start: start, size: overflow ? UInt64.max : size, type: String(attrs[1]), name: words.joined(separator: " "),
                         offset: offset, kvm: kvm)
    }

    /// One vCPU's state from `info registers`.
    public struct CPURegisters: Sendable, Equatable {
        /// In the reference VMM's order and names (rax … r15, rip, rflags); only those QEMU printed (32-bit
        /// code shows eight general registers, eip and eflags, as the low halves).
        public var general: [String: UInt64] = [:]
        /// Segment selectors, cs ds es fs gs ss.
        public var selectors: [String: UInt64] = [:]
        /// cr0 cr2 cr3 cr4 efer.
        public var control: [String: UInt64] = [:]
        /// `HLT=1`: the vCPU is halted.
        public var halted = false

        static let generalOrder = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
                                   "r12", "r13", "r14", "r15", "rip", "rflags"]
        static let controlOrder = ["cr0", "cr2", "cr3", "cr4", "efer"]
        static let segmentOrder = ["cs", "ds", "es", "fs", "gs", "ss"]

        public var orderedGeneral: [(String, UInt64)] { Self.generalOrder.compactMap { n in general[n].map { (n, $0) } } }
        public var orderedSelectors: [(String, UInt64)] { Self.segmentOrder.compactMap { n in selectors[n].map { (n, $0) } } }
        public var orderedControl: [(String, UInt64)] { Self.controlOrder.compactMap { n in control[n].map { (n, $0) } } }
    }

    /// `info registers -a`: every vCPU by its `CPU#N` index.
    public static func registers(_ text: String) -> [Int: CPURegisters] {
        var cpus: [Int: CPURegisters] = [:]
        var current: Int?
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingSpaces
            if line.hasPrefix("CPU#") {
                current = Int(line.dropFirst(4).prefix { $0.isNumber })
                if let current { cpus[current] = CPURegisters() }
                continue
            }
            guard let index = current else { continue }
            // `R8 =…`, `ES =…`: QEMU pads short names before the `=`.
            let fields = squeezeEquals(line)
            guard let first = fields.first else { continue }
            let name = first.prefix { $0 != "=" }.lowercased()
            if ["es", "cs", "ss", "ds", "fs", "gs"].contains(name) {
                if let sel = UInt64(first.drop { $0 != "=" }.dropFirst(), radix: 16) { cpus[index]!.selectors[name] = sel }
                continue
            }
            for field in fields {
                guard let eq = field.firstIndex(of: "=") else { continue }
                let key = field[..<eq].lowercased()
                guard let value = UInt64(field[field.index(after: eq)...], radix: 16) else { continue }
                switch key {
                case "eax", "ebx", "ecx", "edx", "esi", "edi", "esp", "ebp":
                    cpus[index]!.general["r" + key.dropFirst()] = value
                case "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip":
                    cpus[index]!.general[key] = value
                case "eip": cpus[index]!.general["rip"] = value
                case "efl", "rfl": cpus[index]!.general["rflags"] = value
                case "cr0", "cr2", "cr3", "cr4", "efer": cpus[index]!.control[key] = value
                case "hlt": cpus[index]!.halted = value != 0
                default: break
                }
            }
        }
        return cpus
    }

    /// `xp /Nxb GPA`: the bytes QEMU printed, up to its first error line ("Cannot access memory"); the error
    /// text, if any.
    public static func memoryDump(_ text: String) -> (bytes: [UInt8], error: String?) {
        var bytes: [UInt8] = []
        for raw in text.split(whereSeparator: \.isNewline) {
            guard let colon = raw.range(of: ": ") else { continue }
            let fields = raw[colon.upperBound...].split(separator: " ")
            let values = fields.compactMap { $0.hasPrefix("0x") ? UInt8($0.dropFirst(2), radix: 16) : nil }
            if values.isEmpty || values.count != fields.count { return (bytes, String(raw[colon.upperBound...].trimmingSpaces)) }
            bytes += values
        }
        return (bytes, nil)
    }

    /// The line's space-separated fields after `NAME =VALUE` became `NAME=VALUE`.
    static func squeezeEquals(_ line: Substring) -> [Substring] {
        var out: [Substring] = []
        let words = line.split(separator: " ")
        var i = 0
        while i < words.count {
            if i + 1 < words.count, words[i + 1].hasPrefix("="), !words[i].contains("=") {
                out.append(Substring(String(words[i]) + String(words[i + 1])))
                i += 2
            } else {
                out.append(words[i])
                i += 1
            }
        }
        return out
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        let start = drop { $0 == " " || $0 == "\t" || $0 == "\r" }
        var end = start.endIndex
        while end > start.startIndex, [" ", "\t", "\r"].contains(start[start.index(before: end)]) { end = start.index(before: end) }
        return start[..<end]
    }
}
