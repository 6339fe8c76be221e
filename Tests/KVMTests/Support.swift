import Foundation
import Testing
@testable import KVM

/// Tests that need the KVM device run on every machine that has one; elsewhere they are skipped with this reason.
let kvmPresent: Bool = {
    let present = FileManager.default.fileExists(atPath: KVMSystem.defaultPath)
    if !present { print("skipping real-KVM tests: \(KVMSystem.defaultPath) does not exist on this machine") }
    return present
}()

let kvmAbsentReason: Comment = "/dev/kvm does not exist on this machine"
