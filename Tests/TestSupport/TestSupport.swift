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

/// Why kernel tracing cannot run in these tests, or nil: vmscope loads libtracefs and libtraceevent at run time
/// (Debian's libtracefs1, libtraceevent1; `.ci/run` installs them), and a machine without them skips the tests that
/// trace, printing this.
public let tracingLibrariesMissing: String? = {
    for lib in ["libtraceevent.so.1", "libtracefs.so.1"] where dlopen(lib, RTLD_NOW | RTLD_GLOBAL) == nil {
        let why = "\(lib) is not installed (apt-get install libtracefs1 libtraceevent1): tracing tests are skipped"
        print(why)
        return why
    }
    return nil
}()

/// A fresh directory under the temporary directory, named `vmscope-PREFIX-PID-RANDOM`, for one test's files.
public func makeTestDirectory(_ prefix: String) -> String {
    let d = NSTemporaryDirectory() + "vmscope-\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// A small deterministic generator (SplitMix64), so a failing sequence can be replayed from its seed.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
