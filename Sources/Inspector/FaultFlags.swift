/// Decodes `kvm_run.memory_fault.flags`: every set bit, by its status upstream.
public enum FaultFlags {
    public static let privateBit: UInt64 = 1 << 3

    public enum Status: String, Sendable { case merged, proposed, unknown }

    public struct Bit: Sendable, Equatable {
        public var bit: Int
        public var name: String
        public var status: Status
        /// How the detail panel prints it: merged names bare, proposals marked, unknown bits as `bit N`.
        public var label: String {
            switch status {
            case .merged: name
            case .proposed: "\(name) (proposed, not merged)"
            case .unknown: name
            }
        }
    }

    /// Every set bit of `flags`, lowest first (kvm-facts.md: only bit 3 is merged).
    public static func decode(_ flags: UInt64) -> [Bit] {
        (0..<64).compactMap { bit -> Bit? in
            guard flags & (1 << UInt64(bit)) != 0 else { return nil }
            switch bit {
            case 3: return Bit(bit: 3, name: "PRIVATE", status: .merged)
            case 0: return Bit(bit: 0, name: "READ", status: .proposed)
            case 1: return Bit(bit: 1, name: "WRITE", status: .proposed)
            case 2: return Bit(bit: 2, name: "EXEC", status: .proposed)
            case 4: return Bit(bit: 4, name: "USERFAULT/TAGACCESS", status: .proposed)
            default: return Bit(bit: bit, name: "bit \(bit)", status: .unknown)
            }
        }
    }
}
