import ControlProtocol
import Foundation
import Testing
@testable import Inspector

/// The map as a heat map (a stock QEMU with KVM's tracepoints on: no attributes, traced accesses with GPAs): RAM
/// from the KVM-mapped ranges, each recently traced page lit wherever it lies (the local APIC's page is far above
/// RAM), the reason there are no attributes in the legend, and the cursor line saying what is under it.
struct HeatMapTests {
    func qemuModel() -> InspectorModel {
        var m = InspectorModel()
        m.vm.ramSize = 32 << 20
        m.memslots = [MemslotRow(slot: 0, gpa: 0, size: 0xA0000, view: "plain", backing: "ram"),
                      MemslotRow(slot: 1, gpa: 0x10_0000, size: (32 << 20) - 0x10_0000, view: "plain", backing: "ram")]
        m.heatMapNote = "QEMU 7.2.22: no guest_memfd (QEMU added it in 9.1); private/shared map unavailable"
        return m
    }

    func trace(_ gpa: UInt64, at ns: UInt64) -> FaultRecord {
        FaultRecord(seq: 1, timeNs: ns, vcpu: 0, gpa: gpa, size: 4, flags: 0, isPrivate: false, access: .write, source: .trace,
                    exit: .mmio, attribute: .none, slot: nil, action: .reported)
    }

    @Test func tracedPagesLightUpOverQEMUsRAMAndAboveIt() throws {
        var m = qemuModel()
        #expect(m.mapPages == (32 << 20) / 4096, "before any access: RAM")
        m.apply(faults: FaultBatch(records: [trace(0xFEE0_0300, at: 1), trace(0x20_0000, at: 1)], dropped: 0), nowNs: 1_000_000_000)
        #expect(m.mapPages == 0xFEE01, "the APIC page widens the map")
        var u = ui()
        u.fit(m, width: 200, height: 60)
        let s = Renderer(nowNs: 1_500_000_000).render(m, u, width: 200, height: 60)
        let text = s.text
        let pane = try #require(Renderer.layout(width: 200, height: 60, ui: u)[.map])
        let note = Renderer.heatNote(m, width: pane.inner.width)
        #expect(note.joined(separator: " ") == "heat map of KVM's traced accesses · QEMU 7.2.22: no guest_memfd (QEMU added it in 9.1); private/shared map unavailable")
        #expect(s.lines[pane.inner.y].contains(note[0]), "the note above the grid: \(text)")
        let (cols, rows) = Renderer.mapGrid(pane, noteLines: note.count)
        #expect((cols, rows) == (u.mapColumns, u.mapRows), "fit gives the UI the grid the renderer draws")
        let map = Rect(x: pane.inner.x, y: pane.inner.y + note.count, width: cols, height: rows)
        var lit = 0, ram = 0, blank = 0
        for i in 0..<(cols * rows) {
            let c = s[map.x + i % cols, map.y + i / cols]
            if c.role == .faulted { lit += 1 } else if c.char == "·" { ram += 1 } else if c.char == " " { blank += 1 }
        }
        let span = MapGeometry.fitting(totalPages: m.mapPages, columns: cols, rows: rows)
        #expect(lit == 2, "the RAM page and the APIC page, \(span) pages a cell")
        #expect(ram == Int(((32 << 20) / 4096 + span - 1) / span) - 1, "RAM cells, one of them lit")
        #expect(blank > 0, "the hole between RAM and the APIC is neither")
        #expect(text.contains("0x0 gfn 0 KVM-mapped RAM, attribute not reported"), "\(text)")
        // Three seconds on, the marks have faded; the extent stays.
        let later = Renderer(nowNs: 5_000_000_000).render(m, u, width: 200, height: 60)
        #expect(!(0..<(cols * rows)).contains { later[map.x + $0 % cols, map.y + $0 / cols].role == .faulted })
        #expect(m.mapPages == 0xFEE01)
    }

    @Test func theCursorLineSaysWhenACellWasLastTraced() throws {
        var m = qemuModel()
        m.apply(faults: FaultBatch(records: [trace(0xFEE0_0300, at: 1)], dropped: 0), nowNs: 1_000_000_000)
        var u = ui()
        u.fit(m, width: 200, height: 60)
        u.cursorGFN = 0xFEE00
        let text = Renderer(nowNs: 1_250_000_000).render(m, u, width: 200, height: 60).text
        #expect(text.contains("gfn \(0xFEE00) not KVM-mapped (device or hole) · cell traced 250 ms ago"), "\(text)")
    }
}
