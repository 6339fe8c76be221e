import Testing
@testable import Libvirt

/// The domain XML's facts, from XML shaped as libvirt 9.0 writes it (`virsh dumpxml` of a pinned, memfd-backed
/// SEV-SNP domain), and from XML that is not.
struct DomainFactsTests {
    static let xml = """
    <domain type='kvm' id='3'>
      <name>snp-guest</name>
      <uuid>28c4b968-f0f5-49fb-bf29-71af8afde5f6</uuid>
      <memory unit='KiB'>262144</memory>
      <memoryBacking>
        <source type='memfd'/>
        <access mode='shared'/>
        <locked/>
      </memoryBacking>
      <vcpu placement='static'>2</vcpu>
      <cputune>
        <vcpupin vcpu='0' cpuset='1'/>
        <vcpupin vcpu="1" cpuset="0-1"/>
      </cputune>
      <!-- <launchSecurity type='tdx'/> is a comment -->
      <devices>
        <emulator>/usr/bin/qemu-system-x86_64</emulator>
        <serial type='pty'><target port='0'/></serial>
        <console type='pty'><target type='serial' port='0'/></console>
        <interface type='network'><source network='default'/></interface>
        <interface type='network'><source network='other'/></interface>
      </devices>
      <launchSecurity type='sev-snp'>
        <policy>0x00030000</policy>
      </launchSecurity>
    </domain>
    """

    @Test func pinningBackingLaunchSecurityAndDevices() {
        let f = DomainFacts(xml: Self.xml)
        #expect(f.vcpus == 2)
        #expect(f.memoryKiB == 262144)
        #expect(f.pinning.map(\.vcpu) == [0, 1] && f.pinning.map(\.cpuset) == ["1", "0-1"])
        #expect(f.memoryBacking == ["source memfd", "access", "locked"])
        #expect(f.launchSecurity == "sev-snp", "the commented-out tdx is not taken")
        #expect(f.devices.map(\.kind) == ["emulator", "serial", "console", "interface"] && f.devices.map(\.count) == [1, 1, 1, 2])
        #expect(f.summary == "2 vCPUs (pinned 0→1, 1→0-1), 256 MiB, memory backing source memfd, access, locked, launch security sev-snp; devices: emulator 1, serial 1, console 1, interface 2")
    }

    @Test func aPlainDomainSaysWhatItLacks() {
        let f = DomainFacts(xml: "<domain type='kvm'><memory unit='MiB'>256</memory><vcpu>1</vcpu><devices/></domain>")
        #expect(f.summary == "1 vCPU (unpinned), 256 MiB, memory backing default, launch security none")
    }

    @Test func malformedXMLGivesWhatItCanAndNeverTraps() {
        for bad in ["", "<", "<domain", "<domain><vcpu>x</vcpu>", "<domain><memory unit='KiB'>99999999999999999999</memory></domain>",
                    "<domain><memory unit='GiB'>18446744073709551615</memory></domain>", "<cputune><vcpupin vcpu='a' cpuset=/></cputune>",
                    String(repeating: "<a>", count: 10_000), "<domain><launchSecurity/></domain>"] {
            _ = DomainFacts(xml: bad).summary
        }
        #expect(DomainFacts(xml: "<domain><memory unit='GiB'>18446744073709551615</memory></domain>").memoryKiB == nil)
        #expect(DomainFacts(xml: "<domain><launchSecurity/></domain>").launchSecurity == "unknown")
    }

    @Test func localURIsAreTheOnesWithoutATransportOrHost() throws {
        // (No connection is opened: the URI rule alone.)
        #expect(LibvirtURI.isLocal("qemu:///system") && LibvirtURI.isLocal("qemu:///session"))
        #expect(!LibvirtURI.isLocal("qemu+ssh://host/system") && !LibvirtURI.isLocal("qemu://host/system") && !LibvirtURI.isLocal("system"))
    }
}
