import Foundation
import HostTracing
import Schema

/// `vmscope top` without a terminal: the VM table, its sort, filter and cursor, and what a key does. The terminal
/// loop (in `vmscope`) samples, paints and acts on the effects.
public struct TopView: Sendable {
    public enum Sort: String, Sendable, CaseIterable {
        case exits, mmio, hypercalls, rss, pid, name
        var next: Sort { Sort.allCases[(Sort.allCases.firstIndex(of: self)! + 1) % Sort.allCases.count] }
    }
    public enum Effect: Sendable, Equatable {
        case quit
        /// Open the inspector on this VM's process.
        case attach(pid: Int32)
    }

    public var rows: [HostVMs.Row] = []
    public var sort = Sort.exits
    public var filter = ""
    /// The filter being typed after `/`.
    public var prompt: String?
    public var cursor = 0
    public var status: (text: String, isError: Bool)?
    /// Why tracing did not start (the packages to install, root), for the legend of the traced columns' `-`.
    public var notTraced: String?
    public var themeNames: [String] = ["default"]
    public var themeIndex = 0
    /// ASCII glyphs (the sort mark).
    public var ascii = false

    public init() {}

    public var shown: [HostVMs.Row] {
        let f = filter.lowercased()
        let kept = f.isEmpty ? rows : rows.filter { $0.sample.name.lowercased().contains(f) || String($0.sample.pid).contains(f) }
        func rate(_ r: HostVMs.Row, _ k: String) -> Double { r.perSecond[k] ?? 0 }
        return kept.sorted { a, b in
            switch sort {
            case .exits: rate(a, HostVMs.Stat.exits) > rate(b, HostVMs.Stat.exits)
            case .mmio: rate(a, HostVMs.Stat.mmio) > rate(b, HostVMs.Stat.mmio)
            case .hypercalls: rate(a, HostVMs.Stat.hypercalls) > rate(b, HostVMs.Stat.hypercalls)
            case .rss: (a.sample.rssBytes ?? 0) > (b.sample.rssBytes ?? 0)
            case .pid: a.sample.pid < b.sample.pid
            case .name: a.sample.name < b.sample.name
            }
        }
    }

    public mutating func handle(_ key: Key) -> Effect? {
        if let p = prompt {
            switch key {
            case .escape: prompt = nil
            case .enter: filter = p; prompt = nil; cursor = 0; status = (p.isEmpty ? "filter cleared" : "filter: \(p)", false)
            case .backspace: prompt = String(p.dropLast())
            case .char(let c): prompt = p + String(c)
            default: break
            }
            return nil
        }
        let count = shown.count
        switch key {
        case .char("q"): return .quit
        case .up, .char("k"): cursor = max(0, cursor - 1)
        case .down, .char("j"): cursor = min(max(0, count - 1), cursor + 1)
        case .char("s"): sort = sort.next; status = ("sorted by \(sort.rawValue)", false)
        case .char("/"): prompt = filter
        case .char("t"): themeIndex = (themeIndex + 1) % max(1, themeNames.count); status = ("theme \(themeNames[themeIndex])", false)
        case .enter:
            guard cursor < count else { status = ("no VM to attach to", true); return nil }
            return .attach(pid: shown[cursor].sample.pid)
        default: break
        }
        return nil
    }

    public static let columns = "    PID NAME                 VCPUS    EXITS/s  USEREXIT/s  MEMFLT/s     PRIV     MMIO/s    HCALL/s      RSS  TOP EXITS"

    /// The header with the sort column marked (`▼`, or `v` in ASCII) in the space before its name.
    public static func header(sortedBy sort: Sort, ascii: Bool = false) -> String {
        let label = switch sort {
        case .exits: "EXITS/s"; case .mmio: "MMIO/s"; case .hypercalls: "HCALL/s"; case .rss: "RSS"; case .pid: "PID"; case .name: "NAME"
        }
        guard let r = columns.range(of: " " + label) else { return columns }
        return columns.replacingCharacters(in: r, with: (ascii ? "v" : "▼") + label)
    }

    /// What `-` means, for the first shown row that has it: KVM's counters could not be read (with why), or the
    /// traced columns have no tracing (with why, when `notTraced` says). nil when no row shows `-`.
    public static func dashLegend(_ rows: [HostVMs.Row], notTraced: String? = nil) -> String? {
        if let r = rows.first(where: { $0.perSecond[HostVMs.Stat.exits] == nil }) {
            return "- : pid \(r.sample.pid): " + (r.sample.countersMissing.map(terminalSafe) ?? "no sample of KVM's counters yet")
        }
        if rows.contains(where: { $0.perSecond[HostVMs.Stat.tracedUserspaceExits] == nil }) {
            return "- in USEREXIT/s and MEMFLT/s: not traced: " + (notTraced.map(terminalSafe) ?? "tracing needs root and libtracefs")
        }
        if rows.contains(where: { $0.sample.stats[HostVMs.Stat.tracedPrivateBytes] == nil }) {
            return "- in PRIV: this kernel does not trace conversions (kvm_vm_set_mem_attributes and the system-call events: Linux 6.17 and later)"
        }
        return nil
    }

    public func render(width: Int, height: Int) -> Screen {
        var s = Screen(width: width, height: height)
        let title = " vmscope top │ \(rows.count) KVM VM\(rows.count == 1 ? "" : "s") │ sort \(sort.rawValue)"
            + (filter.isEmpty ? "" : " │ filter \(filter)")
        s.put(title.padding(toLength: width, withPad: " ", startingAt: 0), x: 0, y: 0, role: .statusBar, limit: width)
        s.put(Self.header(sortedBy: sort, ascii: ascii), x: 0, y: 1, role: .header, limit: width)
        let list = shown
        let legend = Self.dashLegend(list, notTraced: notTraced)
        let bottomRows = legend == nil ? 1 : 2
        if let legend, height > 3 { s.put(legend, x: 0, y: height - 2, role: .dim, limit: width) }
        for (i, r) in list.enumerated() where i + 2 < height - bottomRows {
            s.put(Self.line(r), x: 0, y: i + 2, role: i == cursor ? .cursor : .normal, limit: width)
        }
        if list.isEmpty { s.put(rows.isEmpty ? "(no KVM VMs on this host)" : "(no VM matches the filter)", x: 0, y: 2, role: .dim, limit: width) }
        let bottom: (String, Role) = if let p = prompt { ("/" + p, .statusBar) }
            else if let st = status { (st.text, st.isError ? .statusError : .statusOK) }
            else { ("↑↓ select · Enter attach · s sort · / filter · t theme · q quit", .dim) }
        s.put(bottom.0, x: 0, y: height - 1, role: bottom.1, limit: width)
        return s
    }

    /// One row of the table (also `vmscope top --once`).
    public static func line(_ r: HostVMs.Row) -> String {
        let s = r.sample
        func rate(_ k: String) -> String { r.perSecond[k].map { String(format: "%.0f", $0) } ?? "-" }
        func pad(_ t: String, _ n: Int) -> String { t.count >= n ? t : String(repeating: " ", count: n - t.count) + t }
        // A process names itself (QEMU's -name, comm): shown, never sent to the terminal as it is.
        let safe = terminalSafe(s.libvirt.map { "\($0.name) (libvirt)" } ?? s.name)
        let name = safe.count > 20 ? String(safe.prefix(19)) + "…" : safe
        return String(format: "%7d ", s.pid) + name.padding(toLength: 20, withPad: " ", startingAt: 0)
            + String(format: " %5d ", s.vcpus) + pad(rate(HostVMs.Stat.exits), 10) + " " + pad(rate(HostVMs.Stat.tracedUserspaceExits), 11) + " "
            + pad(rate(HostVMs.Stat.tracedMemoryFaults), 9) + " "
            + pad(s.stats[HostVMs.Stat.tracedPrivateBytes].map { "≥" + Fmt.size($0) } ?? "-", 8) + " "
            + pad(r.perSecond[HostVMs.Stat.mmio] != nil ? rate(HostVMs.Stat.mmio) : rate(HostVMs.Stat.tracedMMIO), 10) + " "
            + pad(rate(HostVMs.Stat.hypercalls), 10) + " " + pad(s.rssBytes.map { Fmt.size($0) } ?? "-", 8) + "  "
            + r.topExits.map { "\($0.0) \(Int($0.1))" }.joined(separator: ", ")
    }
}
