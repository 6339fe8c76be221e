import ControlProtocol

/// The four views.
public enum Pane: Int, Sendable, CaseIterable {
    case map = 0, faults, memslots, vcpus
    public var title: String {
        switch self {
        case .map: "1 GFN map"
        case .faults: "2 Faults"
        case .memslots: "3 Memslots"
        case .vcpus: "4 vCPUs"
        }
    }
}

/// A key as the input handler sees it.
public enum Key: Sendable, Equatable, Hashable {
    case char(Character)
    case up, down, left, right, pageUp, pageDown, home, end, tab, backTab, enter, escape, backspace, resize
}

/// Something the user asked the VM's source to do: typed, whatever the source (vmscope's VMM, QEMU, a recording)
/// makes of it. The source says whether it can (`VMSource.refusal`).
public enum InspectorAction: Sendable, Equatable {
    case convert(gpa: UInt64, size: UInt64, to: PageAttribute)
    case inject(InjectionKind, vcpu: Int, gpa: UInt64, size: UInt64)
    case vcpu(index: Int, VCPUAction)
    case setPolicy(FaultPolicy)
    case readMemory(gpa: UInt64, size: UInt64)

    /// What the status line calls it.
    public var description: String {
        switch self {
        case .convert(let gpa, let size, let to): "convert \(Fmt.exactSize(size)) at \(Fmt.hex(gpa)) to \(to.rawValue)"
        case .inject(let kind, let vcpu, let gpa, let size):
            "inject \(kind.rawValue) into \(kind == .nmi ? "vCPU \(vcpu)" : "\(Fmt.exactSize(size)) at \(Fmt.hex(gpa))")"
        case .vcpu(let index, let action): "\(action.rawValue) vCPU \(index)"
        case .setPolicy(let p): "fault policy \(p.rawValue)"
        case .readMemory(let gpa, _): "read \(Fmt.hex(gpa))"
        }
    }

    /// The `:` command line's verbs for actions.
    enum Verb: String { case convert, policy }

    /// Whether it changes the VM (refused in read-only sessions).
    public var mutates: Bool { if case .readMemory = self { false } else { true } }
}

/// What the controller does for the UI: act on the source, write files, move a replay, or quit.
public enum Effect: Sendable, Equatable {
    case act(InspectorAction)
    /// Read memory where row `row` of the memslot view (in its current order) starts: the session looks the row
    /// up in its model (`Renderer.memslot(atRow:)`), so no frame has to keep the rows' order for a key.
    case readMemslot(row: Int)
    /// Write a snapshot of what the views show to a file.
    case snapshot
    /// Start recording the session to a file, or stop and finish it.
    case toggleRecording
    case replay(ReplayControl)
    case quit
}

/// The keys of a replay's timeline.
public enum ReplayControl: Sendable, Equatable {
    case togglePause
    case skip(seconds: Int)
    case previousBurst, nextBurst
}

/// What the status bar shows of a replay.
public struct ReplayStatus: Sendable, Equatable {
    public var positionNs: UInt64
    public var durationNs: UInt64
    public var speed: Double
    public var paused: Bool
    public init(positionNs: UInt64, durationNs: UInt64, speed: Double, paused: Bool) {
        self.positionNs = positionNs
        self.durationNs = durationNs
        self.speed = speed
        self.paused = paused
    }
}

/// What the status bar shows of a recording in progress.
public struct RecordingStatus: Sendable, Equatable {
    public var file: String
    public var startedNs: UInt64
    public init(file: String, startedNs: UInt64) { self.file = file; self.startedNs = startedNs }
}

/// One line of the key table: the input handler dispatches on it and the help screen prints it.
public struct KeyBinding: Sendable {
    public var keys: [Key]
    public var label: String
    public var help: String
    public var mutates: Bool
    let action: @Sendable (inout InspectorUI) -> [Effect]
}

/// A dialog over the views.
public enum Overlay: Sendable, Equatable {
    case help
    case confirm(prompt: String, effect: Effect)
    case injectMenu(selected: Int)
    case hexDump(gpa: UInt64, bytes: [UInt8]?)
}
