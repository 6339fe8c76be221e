import Schema

/// `vmscope demo --story`: a guided tour for a newcomer, in about a minute. Each step says on screen what it does
/// and what to look at, does it through the same typed actions a key would (`InspectorAction`), and lets it run
/// for a while; the story line under it (`Story`) tells what followed each conversion. It ends with the keys to go
/// on alone.
public struct Tour: Sendable {
    public struct Step: Sendable {
        public var say: String
        public var actions: [InspectorAction]
        /// How long the step stays before the next (at speed 1).
        public var seconds: Double
        /// Also resume every vCPU (their number is known only once the tour runs).
        public var resumeAll = false
    }

    public private(set) var steps: [Step]
    public private(set) var index = -1
    private var stepStartedNs: UInt64 = 0
    /// Steps go `speed` times faster (tests).
    public var speed: Double

    public init(speed: Double = 1) {
        self.speed = max(0.1, speed)
        steps = [
            Step(say: "Tour 1/5 · Each cell of the map is guest RAM: █ private (only the guest may see it; on "
                    + "confidential hardware the host cannot), ░ shared (host and guest, e.g. for I/O). The guest walks "
                    + "its RAM through two views: its private view, and the shared alias (the same pages at GPA + the "
                    + "alias bit, marked `a`).",
                 actions: [.setPolicy(.convert)], seconds: 10),
            Step(say: "Tour 2/5 · Converting 1 MiB at 0x100000 to shared. The guest still reads it through its "
                    + "private view: each such access is a memory fault, and under policy convert the VMM converts the "
                    + "page back. The line below says what followed.",
                 actions: [.convert(gpa: 0x10_0000, size: 0x10_0000, to: .shared)], seconds: 14),
            Step(say: "Tour 3/5 · Policy pause: now a fault stops the vCPU that made it instead (vCPUs view, key 4: "
                    + "fault-stopped), as a debugger would. Converting 64 KiB at 0x200000 to shared.",
                 actions: [.setPolicy(.pause), .convert(gpa: 0x20_0000, size: 0x1_0000, to: .shared)], seconds: 14),
            Step(say: "Tour 4/5 · Resuming every vCPU under policy convert: the stopped access is converted and "
                    + "the guest runs on. Faults view (key 2): one row a fault: vCPU, address, what it wanted (priv or "
                    + "shrd), the exit it came from, what the policy did.",
                 actions: [.setPolicy(.convert)], seconds: 12, resumeAll: true),
            Step(say: "Tour 5/5 · Done. On your own: v selects on the map, s or p converts it, i injects a fault, "
                    + ": takes a command (convert 0x300000 64K shared), ? lists every key and explains each term. "
                    + "q quits.",
                 actions: [], seconds: 0),
        ]
    }

    public var finished: Bool { index >= steps.count - 1 }

    /// At `nowNs`: the next step once this one's time is up (its words and what to do), or nil.
    public mutating func advance(nowNs: UInt64, vcpuCount: Int) -> (say: String, actions: [InspectorAction])? {
        if index >= 0 {
            guard !finished, nowNs &- stepStartedNs >= UInt64(steps[index].seconds / speed * 1e9) else { return nil }
        }
        index += 1
        stepStartedNs = nowNs
        let step = steps[index]
        let resumes = step.resumeAll ? (0..<vcpuCount).map { InspectorAction.vcpu(index: $0, .resume) } : []
        return (step.say, step.actions + resumes)
    }
}
