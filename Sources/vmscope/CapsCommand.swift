import ArgumentParser
import Foundation
import KVM
import VMM

/// `vmscope caps`: what this kernel's KVM offers, and what vmscope will do with each capability.
struct CapsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "caps",
        abstract: "Print the KVM capabilities vmscope relies on and what it does with each.")

    @Flag(name: .long, help: "Print one JSON object instead of a table.")
    var json = false

    @Option(name: .long, help: "The KVM device.")
    var device = KVMSystem.defaultPath

    func run() throws {
        let system = DeviceUnavailable.openOrExit(device)
        let caps = try KVMCapabilities.probe(system)
        let items = CapabilityPlan.items(caps)
        if json {
            let report = CapsReport(caps, device: device, items: items)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(CapsTable.render(items, device: device))
        }
    }
}

/// The JSON shape of `vmscope caps --json`: raw values first, then the plan lines.
struct CapsReport: Encodable {
    struct VMTypeEntry: Encodable {
        var type: UInt
        var name: String
        var created: Bool
        var createErrno: String?
        var memoryAttributes: UInt64
        var privateAttribute: Bool
        var guestMemfdFlags: [String]
    }
    struct PlanEntry: Encodable {
        var capability: String
        var value: String
        var vmscope: String
    }

    var device: String
    var apiVersion: Int
    var vmTypes: [VMTypeEntry]
    var userMemory2: Bool
    var guestMemfd: Bool
    var guestMemfdFlags: [String]
    /// True where any offered VM type tracks the PRIVATE attribute in the kernel.
    var memoryAttributes: Bool
    var memoryAttributesSystem: UInt64
    var memoryFaultInfo: Bool
    var exitHypercall: UInt64
    var mapGpaRangeHypercall: Bool
    var binaryStatsFd: Bool
    var nrMemslots: Int
    var maxVcpus: Int
    var mceBanks: Int
    var mcgCapSupported: UInt64?
    var dirtyRingMaxBytes: Int
    var immediateExit: Bool
    var attributeEngine: String
    var attributeEngineReason: String
    var plan: [PlanEntry]

    init(_ c: KVMCapabilities, device: String, items: [CapabilityPlanItem]) {
        self.device = device
        apiVersion = c.apiVersion
        vmTypes = c.perVMType.map {
            VMTypeEntry(type: $0.type.rawValue, name: $0.type.name, created: $0.created,
                        createErrno: $0.createErrno.map(\.name),
                        memoryAttributes: $0.memoryAttributes, privateAttribute: $0.supportsPrivateAttribute,
                        guestMemfdFlags: $0.guestMemfdFlags.names)
        }
        userMemory2 = c.userMemory2
        guestMemfd = c.guestMemfd
        guestMemfdFlags = c.guestMemfdFlags.names
        memoryAttributes = c.memoryAttributes & MemoryAttributes.private.rawValue != 0 || c.privateMemoryVMType != nil
        memoryAttributesSystem = c.memoryAttributes
        memoryFaultInfo = c.memoryFaultInfo
        exitHypercall = c.exitHypercallMask
        mapGpaRangeHypercall = c.mapGPARangeHypercall
        binaryStatsFd = c.binaryStatsFD
        nrMemslots = c.nrMemslots
        maxVcpus = c.maxVCPUs
        mceBanks = c.mceBanks
        mcgCapSupported = c.mcgCapSupported
        dirtyRingMaxBytes = c.dirtyRingMaxBytes
        immediateExit = c.immediateExit
        let decision = try? AttributeEngineDecision.decide(.auto, capabilities: c)
        attributeEngine = decision?.engine.rawValue ?? "none"
        attributeEngineReason = decision?.reason ?? ""
        plan = items.map { PlanEntry(capability: $0.capability, value: $0.value, vmscope: $0.consequence) }
    }
}

/// The human form of `vmscope caps`: aligned columns, one capability a line.
enum CapsTable {
    static func render(_ items: [CapabilityPlanItem], device: String) -> String {
        let nameWidth = items.map(\.capability.count).max() ?? 0
        let valueWidth = min(40, items.map(\.value.count).max() ?? 0)
        var lines = ["KVM capabilities of \(device)", ""]
        lines.append(pad("CAPABILITY", nameWidth) + "  " + pad("VALUE", valueWidth) + "  VMSCOPE")
        for item in items {
            lines.append(pad(item.capability, nameWidth) + "  " + pad(item.value, valueWidth) + "  " + item.consequence)
        }
        return lines.joined(separator: "\n")
    }

    private static func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }
}
