import Foundation

/// Whether this machine has KVM; tests that need it are skipped, with this reason printed, only when it is absent.
public let kvmPresent = FileManager.default.fileExists(atPath: "/dev/kvm")

/// Polls `condition` every 10 ms for at most `seconds`.
public func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}
