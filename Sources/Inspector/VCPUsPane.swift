import ControlProtocol
import HostTracing

/// The vCPU pane: state, exits, registers and the guest's counters.
extension Renderer {
    /// The guest's counters the vCPU view shows.
    static let guestShown: Set<String> = Set([GuestCounter.heartbeat, .integrityErrors, .mceSeen, .nmiSeen].map(\.rawValue))

    func vcpusPane(_ s: inout Screen, _ r: Rect, _ m: InspectorModel, _ ui: InspectorUI) {
        // The host thread last: what perf, top and gdb need, and what a narrow pane leaves out (whole, never cut).
        let threadFits = r.width >= 67
        s.put("vcpu state          last exit        exits      rate/s" + (threadFits ? "  thread" : ""), x: r.x, y: r.y, role: .header, limit: r.width)
        if m.vcpusLeftOut > 0 {
            let note = "(+\(m.vcpusLeftOut) vCPUs past KVM's \(InspectorModel.maxVCPUs) not shown)"
            s.put(note, x: max(r.x, r.x + r.width - note.count), y: r.y, role: .warning, limit: r.width)
        }
        var y = r.y + 1
        let seconds = Double(max(m.vcpuRefreshIntervalNs, 1)) / 1e9
        for v in m.vcpus where y < r.y + r.height {
            let prev = m.previousVCPUs.first { $0.index == v.index }
            // A counter that went backwards (the VM was restarted) has no rate.
            let rate = prev.map { v.totalExits >= $0.totalExits ? Double(v.totalExits - $0.totalExits) / seconds : 0 } ?? 0
            // A QEMU without KVM has no exit counters: none shown rather than zeros.
            let counted = !(m.peerIsQEMU && v.stats.isEmpty)
            let line = "\(Fmt.padLeft(String(v.index), 4)) \(Fmt.pad(v.state.rawValue, 14)) \(Fmt.pad(v.lastExit, 16)) "
                + "\(Fmt.padLeft(counted ? String(v.totalExits) : "-", 10)) \(Fmt.padLeft(counted ? String(Int(rate)) : "-", 10))"
                + (v.threadID > 0 && threadFits ? "  \(v.threadID)" : "")
            let role: Role = ui.focus == .vcpus && v.index == ui.vcpuCursor ? .cursor
                : (v.isInTrouble ? .warning : .normal)
            s.put(line, x: r.x, y: y, role: role, limit: r.width)
            y += 1
        }
        guard let v = m.vcpus.first(where: { $0.index == ui.vcpuCursor }) ?? m.vcpus.first else {
            s.put(m.connection == .disconnected("") ? "" : "no vCPUs reported", x: r.x, y: y, role: .dim, limit: r.width)
            return
        }
        let prev = m.previousVCPUs.first { $0.index == v.index }
        func oldValue(_ list: [(String, UInt64)]?, _ name: String) -> UInt64? { list?.first { $0.0 == name }?.1 }
        y += 1
        guard y < r.y + r.height else { return }
        if let error = v.error {
            for line in wrap("vCPU \(v.index) stopped: \(error)", r.width) where y < r.y + r.height {
                s.put(line, x: r.x, y: y, role: .error, limit: r.width)
                y += 1
            }
            guard y < r.y + r.height else { return }
        }
        s.put("vCPU \(v.index) registers", x: r.x, y: y, role: .title, limit: r.width)
        y += 1
        let cellWidth = 24
        let perRow = max(1, r.width / cellWidth)
        var items: [(String, UInt64, Bool)] = v.registers.map { name, value in (name, value, oldValue(prev?.registers, name).map { $0 != value } ?? false) }
        items += v.segments.map { ($0.0, $0.1, false) } + v.controlRegisters.map { ($0.0, $0.1, false) }
        for (i, item) in items.enumerated() {
            let row = y + i / perRow
            guard row < r.y + r.height else { break }
            s.put(Fmt.pad("\(Fmt.padLeft(item.0, 6)) \(Fmt.hex(item.1, width: 8))", cellWidth), x: r.x + (i % perRow) * cellWidth, y: row,
                  role: item.2 ? .changed : .normal, limit: r.width - (i % perRow) * cellWidth)
        }
        y += (items.count + perRow - 1) / perRow + (items.isEmpty ? 0 : 1)
        // Exits by reason, with what changed since the last refresh.
        if y < r.y + r.height && !v.exitCounts.isEmpty {
            let text = "exits: " + v.exitCounts.map { name, count in
                let delta = oldValue(prev?.exitCounts, name).map { count >= $0 ? count - $0 : 0 } ?? 0
                return delta > 0 ? "\(name) \(count) (+\(delta))" : "\(name) \(count)"
            }.joined(separator: "  ")
            s.put(text, x: r.x, y: y, role: .normal, limit: r.width)
            y += 1
        }
        if m.peerIsQEMU && v.stats.isEmpty && y < r.y + r.height {
            let why = m.vm.accelerator.map { $0.hasPrefix("kvm") ? "query-stats gave none" : "QEMU runs \($0)" } ?? "query-stats gave none"
            s.put("no KVM statistics: \(why)", x: r.x, y: y, role: .dim, limit: r.width)
            y += 1
        }
        let wanted = ["exits", "io_exits", "mmio_exits", "halt_exits", "insn_emulation", "signal_exits", "irq_exits", "nmi_injections"]
        let stats = wanted.compactMap { name in v.stats.first { $0.0 == name } } + v.guest.filter { Self.guestShown.contains($0.0) }
        for (i, st) in stats.enumerated() {
            let row = y + i / perRow
            guard row < r.y + r.height else { break }
            let changed = (oldValue(prev?.stats, st.0) ?? oldValue(prev?.guest, st.0)).map { $0 != st.1 } ?? false
            let role: Role = st.0 == GuestCounter.integrityErrors.rawValue && st.1 > 0 ? .error : (changed ? .changed : .normal)
            // At least one space before the next cell: a long count (insn_emulation 271137871) ran into its
            // neighbour; one that does not fit is shown in millions or billions instead of cut.
            var text = "\(st.0) \(st.1)"
            if text.count > cellWidth - 1 {
                text = "\(st.0) " + (st.1 >= 1_000_000_000 ? Fmt.format1(Double(st.1) / 1e9) + "G" : Fmt.format1(Double(st.1) / 1e6) + "M")
            }
            s.put(Fmt.pad(text, cellWidth), x: r.x + (i % perRow) * cellWidth, y: row, role: role,
                  limit: min(cellWidth - 1, r.width - (i % perRow) * cellWidth))
        }
        y += (stats.count + perRow - 1) / perRow
        // VM-wide KVM statistics, where the peer reports them (QEMU's query-stats target vm).
        let vmWanted = ["pages_4k", "pages_2m", "pages_1g", "mmu_shadow_zapped", "remote_tlb_flush", "nx_lpage_splits"]
        let vmStats = vmWanted.compactMap { name in m.vmStats.first { $0.0 == name } }
        if !vmStats.isEmpty && y < r.y + r.height {
            s.put("VM: " + vmStats.map { "\($0.0) \($0.1)" }.joined(separator: "  "), x: r.x, y: y, role: .dim, limit: r.width)
        }
    }
}
