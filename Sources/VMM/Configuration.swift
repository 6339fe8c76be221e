import Schema

/// How the built-in guest asks for its conversions (`vmscope vmm --guest-requests`).
public enum GuestRequestChannel: String, Sendable, CaseIterable, Codable {
    /// `hypercall` where KVM forwards `KVM_HC_MAP_GPA_RANGE` and the CPU runs hypercalls (hardware KVM: `vmx` or
    /// `svm` in /proc/cpuinfo), else `doorbell`.
    case auto
    /// The doorbell port: an I/O exit, which every KVM forwards.
    case doorbell
    /// `KVM_HC_MAP_GPA_RANGE` (`KVM_EXIT_HYPERCALL`); refused where it cannot work.
    case hypercall
}

/// Knobs of the built-in guest.
public struct GuestOptions: Sendable, Equatable {
    /// Pages in each vCPU's working set.
    public var workingSetPages = 256
    /// Bytes between checked words (a divisor of 4096). Under the software KVM on this project's machines
    /// every guest memory access is emulated (about 1.5 million instructions a second), so the default checks
    /// one word a page.
    public var stride = 4096
    /// Bounce-buffer conversions every N passes (0: never).
    public var convertEvery = 8
    /// A wrong-view touch every M passes (0: never).
    public var wrongViewEvery = 64
    /// Run the conversion selftest (`SelftestPhase`) instead of the demo loop; needs working sets of at least
    /// `SelftestPhase.regionPages` pages.
    public var selftest = false
    /// How the guest asks for conversions.
    public var requests = GuestRequestChannel.auto

    public init(workingSetPages: Int = 256, stride: Int = 4096, convertEvery: Int = 8, wrongViewEvery: Int = 64,
                selftest: Bool = false) {
        self.workingSetPages = workingSetPages
        self.stride = stride
        self.convertEvery = convertEvery
        self.wrongViewEvery = wrongViewEvery
        self.selftest = selftest
    }
}

/// Everything `vmscope vmm` is started with.
public struct VMMConfiguration: Sendable {
    public var name = "vmscope"
    public var vcpus = 2
    public var ramSize: UInt64 = 256 << 20
    public var engine = AttributeEngineRequest.auto
    /// The shared-alias GPA bit; nil picks 31 when RAM fits below 2 GiB, else the first bit above RAM.
    public var sharedAliasBit: Int?
    public var faultPolicy = FaultPolicy.convert
    public var allowMutations = false
    public var allowFaultInjection = false
    /// Whether `read-memory` may return guest memory (false under `vmscope vmm --read-only`).
    public var allowMemoryReads = true
    /// Use at most this many memslots (never more than the kernel's limit).
    public var memslotLimit: Int?
    /// Bytes; no memslot crosses a multiple of it (see `GuestMemory.memslotSpan`).
    public var memslotSpan = GuestMemory.defaultMemslotSpan
    public var faultRingCapacity = 4096
    public var eventLogCapacity = 4096
    public var guest = GuestOptions()
    /// Start the vCPUs running the built-in guest; false leaves RAM empty and the vCPUs unstarted.
    public var runGuest = true
    public var devicePath = "/dev/kvm"

    public init() {}
}
