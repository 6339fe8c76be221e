import Schema

/// What the user's last conversion did and what followed, told in one plain line as the records come in: "256
/// pages at 0x100000 now shared → vCPU 0 touched 12 through its private view → 12 memory faults → converted back
/// (policy convert)". A converted range that the guest touches is converted back within a second under policy
/// `convert`, and nothing else on screen said so.
///
/// Built from the VMM's own records only (fault records in the range, and `MEMORY_ATTRIBUTES_CHANGED` events over
/// it); updated where the model is (the source's thread), so the UI only draws `text`.
public struct Story: Sendable, Equatable {
    public var gpa: UInt64
    public var firstGFN: UInt64
    public var pages: UInt64
    public var to: PageAttribute
    public private(set) var faults: UInt64 = 0
    /// The vCPUs whose accesses faulted in the range, in the order they first did.
    public private(set) var vcpus: [Int] = []
    private var wantedPrivate: UInt64 = 0
    private var wantedShared: UInt64 = 0
    /// Distinct pages touched (counted up to `touchedBound`).
    private var touched: Set<UInt64> = []
    static let touchedBound = 65_536
    private var actions: [String: UInt64] = [:]
    /// Pages the VMM's fault policy converted back (`cause: implicit`), and those the guest asked back itself.
    private var pagesBack: UInt64 = 0
    private var pagesGuestAsked: UInt64 = 0
    /// The first fault in the range (the VMM's monotonic ns): what comes more than `windowNs` after it is the
    /// guest's ordinary traffic, not what followed the conversion, and is left out; so is everything once every
    /// page is back.
    private var firstFaultNs: UInt64?
    static let windowNs: UInt64 = 5_000_000_000
    public var settled: Bool { pagesBack >= pages || pagesGuestAsked >= pages }

    public init(gpa: UInt64, size: UInt64, to: PageAttribute) {
        self.gpa = gpa
        self.firstGFN = gpa / 4096
        self.pages = max(1, (size + 4095) / 4096)
        self.to = to
    }

    func covers(gfn: UInt64) -> Bool { gfn >= firstGFN && gfn - firstGFN < pages }

    /// A fault record on RAM page `gfn` (alias bit removed).
    mutating func note(_ f: FaultRecord, gfn: UInt64) {
        guard covers(gfn: gfn), f.action != .known(.injected), !settled else { return }
        if firstFaultNs == nil { firstFaultNs = f.timeNs }
        guard let first = firstFaultNs, f.timeNs >= first, f.timeNs - first <= Self.windowNs else { return }
        faults += 1
        if let v = f.vcpu, !vcpus.contains(v), vcpus.count < 64 { vcpus.append(v) }
        if f.isPrivate { wantedPrivate += 1 } else { wantedShared += 1 }
        if touched.count < Self.touchedBound { touched.insert(gfn) }
        actions[f.action.rawValue, default: 0] += 1
    }

    /// A `MEMORY_ATTRIBUTES_CHANGED` event: pages of the range turned back by the policy or by the guest.
    mutating func note(attributesChanged gpa: UInt64, size: UInt64, isPrivate: Bool, cause: Open<ConversionCause>, aliasMask: UInt64) {
        let first = (gpa & ~aliasMask) / 4096, count = (size + 4095) / 4096
        let lo = max(first, firstGFN), hi = min(first.saturatingAdd(count), firstGFN.saturatingAdd(pages))
        guard lo < hi, isPrivate != (to == .private), !settled else { return }
        switch cause {
        case .known(.implicit): pagesBack = min(pages, pagesBack + (hi - lo))
        case .known(.guestRequest): pagesGuestAsked = min(pages, pagesGuestAsked + (hi - lo))
        default: break
        }
    }

    static func plural(_ n: UInt64, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }

    /// The line, as it stands while the vCPUs in `stopped` are stopped.
    public var text: String { text(stopped: []) }

    public func text(stopped: Set<Int>) -> String {
        var parts = ["\(Self.plural(pages, "page")) at \(Fmt.hex(gpa)) now \(to.rawValue)"]
        if faults == 0 && pagesBack == 0 && pagesGuestAsked == 0 {
            parts.append("no access to them yet")
            return parts.joined(separator: " → ")
        }
        if faults > 0 {
            let who = vcpus.isEmpty ? "the guest" : vcpus.count == 1 ? "vCPU \(vcpus[0])" : "vCPUs " + vcpus.prefix(4).map(String.init).joined(separator: ",") + (vcpus.count > 4 ? ",…" : "")
            let view = wantedShared == 0 ? (vcpus.count == 1 ? "its private view" : "their private views")
                : wantedPrivate == 0 ? "the shared alias" : "both views"
            let many = touched.count >= Self.touchedBound ? "\(touched.count)+" : "\(touched.count)"
            parts.append("\(who) touched \(many) through \(view)")
            parts.append(Self.plural(faults, "memory fault"))
        }
        let back = to == .private ? "shared" : "private"
        if let n = actions[FaultAction.paused.rawValue], n > 0 {
            let still = vcpus.contains { stopped.contains($0) }
            parts.append("\(vcpus.count == 1 ? "vCPU \(vcpus[0])" : "the vCPU") stopped on the fault (policy pause)"
                         + (still ? ": P on it resumes" : ", then resumed"))
        }
        if pagesBack > 0 || actions[FaultAction.converted.rawValue, default: 0] > 0 {
            let some = pagesBack > 0 && pagesBack < pages ? " (\(pagesBack) of \(pages) pages)" : ""
            parts.append("converted back to \(back)\(some) (policy convert)")
        }
        if pagesGuestAsked > 0 {
            parts.append("the guest asked for \(Self.plural(pagesGuestAsked, "page")) back itself")
        }
        if let n = actions[FaultAction.reported.rawValue], n > 0 {
            parts.append("reported only (policy report): they stay \(to.rawValue)")
        }
        if let n = actions[FaultAction.remapped.rawValue], n > 0 {
            parts.append("mapped again")
        }
        return parts.joined(separator: " → ")
    }
}
