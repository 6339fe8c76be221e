import Inspector
import Schema
import Testing

/// A peer or a file listing 40,000 vCPUs (issue 28, class 3: replay --dump-at --text took 1.7 GB): the views take
/// x86 KVM's limit and say how many were left out.
struct HostileVCPUsTests {
    @Test func theViewsTakeKVMsLimitAndSaySo() throws {
        var m = try fixtureModel()
        let row = try #require(m.vcpus.first)
        m.apply(vcpus: (0..<40_000).map { i in var r = row; r.index = i; return r }, intervalNs: 1_000_000_000)
        #expect(m.vcpus.count == InspectorModel.maxVCPUs && m.vcpusLeftOut == 40_000 - InspectorModel.maxVCPUs)
        let text = Renderer().render(m, ui(focus: .vcpus), width: 160, height: 48).text
        #expect(text.contains("+35904 vCPUs past KVM's 4096 not shown"), "\(text)")
    }
}
