import ControlProtocol
import Foundation
import Testing
@testable import Inspector

struct GFNMapTests {
    @Test func cellsCountTheSamePagesAsABruteForceWalk() {
        var rng = SystemRandomNumberGenerator()
        let total: UInt64 = 10_000
        var runs: [RunRow] = []
        var gfn: UInt64 = 0
        var p = true
        while gfn < total {
            let len = min(UInt64.random(in: 1...300, using: &rng), total - gfn)
            runs.append(RunRow(gpa: gfn * 4096, size: len * 4096, isPrivate: p))
            gfn += len
            p.toggle()
        }
        for span in [1, 8, 64, 256] as [UInt64] {
            let g = MapGeometry(pagesPerCell: span, firstCell: 3, columns: 17, rows: 5)
            let cells = GFNMap.cells(runs: runs, totalPages: total, geometry: g, recentFaults: [:], nowNs: 0)
            #expect(cells.count == 17 * 5)
            for c in cells {
                var priv: UInt64 = 0, shared: UInt64 = 0
                for page in c.firstGFN..<max(c.firstGFN, min(c.firstGFN + span, total)) {
                    let r = runs.first { $0.gpa / 4096 <= page && page < $0.end / 4096 }!
                    if r.isPrivate { priv += 1 } else { shared += 1 }
                }
                #expect(c.privatePages == priv && c.sharedPages == shared, "span \(span) cell at \(c.firstGFN)")
            }
        }
    }

    @Test func fittingSpanCoversAllOfRAM() {
        let span = MapGeometry.fitting(totalPages: 1 << 28, columns: 200, rows: 50)   // 1 TiB
        #expect(span.nonzeroBitCount == 1)
        #expect((1 << 28) / span <= 200 * 50 && (1 << 28) / (span / 2) > 200 * 50)
    }

    @Test func recentFaultsHeatTheirCell() {
        let runs = [RunRow(gpa: 0, size: 1 << 20, isPrivate: true)]
        let g = MapGeometry(pagesPerCell: 16, firstCell: 0, columns: 16, rows: 1)
        let cells = GFNMap.cells(runs: runs, totalPages: 256, geometry: g, recentFaults: [40: 1_000], nowNs: 1_000)
        #expect(cells[2].heat == 1 && cells[1].heat == 0)
        #expect(GFNMap.glyph(cells[2], ascii: true).1 == .faulted)
    }

    /// A fault through the shared alias names the RAM page (gfn without the alias bit, marked `a`), and a kernel
    /// record whose PRIVATE bit disagrees with the view the guest used says which is which.
    @Test func aliasFaultsNameTheRAMPageAndKernelFlagsAreExplained() throws {
        var m = try fixtureModel()
        var f = FaultRecord(seq: 9, timeNs: 1_600_000_000, vcpu: 1, gpa: 0x8012_0000, flags: 8, access: "unknown",
                         source: "kernel", exit: "MEMORY_FAULT", attribute: "private", slot: 7)
        f.isPrivate = false   // through the alias: the guest wanted the shared view
        f.errno = "EFAULT"
        m.append(fault: f, nowNs: 2_000_000_000)
        #expect(m.canonicalGFN(f) == 0x120)
        let row = Renderer.faultLine(f, baseNs: 0, width: 200, alias: m.aliasMask)
        #expect(row.contains("gfn 288a"), "\(row)")
        #expect(row.contains(" -     shrd kernel converted flags 0x8"), "\(row)")
        var u = ui(focus: .faults)
        u.faultCursor = 0
        let text = Renderer(nowNs: 2_000_000_000).render(m, u, width: 200, height: 60).text
        #expect(text.contains("gfn 288 via alias"), "\(text)")
        #expect(text.contains("gpa 0x80120000 gfn 288 via alias 4K was private · slot 7 (shared, memfd) +0x20000"), "\(text)")
        #expect(text.contains("kernel flags give the attribute the access met; the guest used the shared alias, so it wants"), "\(text)")
        // Without an alias bit nothing is stripped.
        #expect(Renderer.faultLine(f, baseNs: 0, width: 200).contains("gfn 524576 "))
    }

    /// A vCPU stopped by an exit it cannot go on from says which, with the exit's data.
    @Test func anErroredVCPUSaysWhy() throws {
        var m = try fixtureModel()
        m.apply(vcpus: try JSON.parse(#"""
            [{"index":0,"thread-id":11,"state":"error","last-exit":"INTERNAL_ERROR","exit-counts":{"INTERNAL_ERROR":1},"regs":{},"sregs":{},"stats":{},"guest":{},
              "error":"KVM_EXIT_INTERNAL_ERROR suberror 1 (EMULATION) data [0x0, 0x1000]"}]
            """#), intervalNs: 1_000_000_000)
        let text = Renderer(nowNs: 2_000_000_000).render(m, ui(focus: .vcpus), width: 200, height: 60).text
        #expect(text.contains("vCPU 0 stopped: KVM_EXIT_INTERNAL_ERROR suberror 1 (EMULATION) data [0x0, 0x1000]"), "\(text)")
    }
}
