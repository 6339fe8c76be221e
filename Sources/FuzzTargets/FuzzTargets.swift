import ControlProtocol
import ControlServer
import HostTracing
import Foundation
import Inspector
import Logging
import VMM

/// What the fuzzer (`vmscope-fuzz`, built with -sanitize=fuzzer,address) and the corpus tests feed bytes to.
/// Each target also checks a property of the result: a violation traps, which the fuzzer reports as a crash.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// The control server's side: bytes from a client, through framing, negotiation and every command, on a
    /// live reference VMM (mutations and injection allowed, so every command's path is reachable). Property:
    /// every line the server sends back is one JSON object that is a greeting, a reply, an error or an event.
    case server
    /// The inspector's side: bytes from a server as a whole session (greeting, replies, events), through the
    /// framer (both with and without the fault fast path) and the decoders into a model, as `attach` and
    /// `snapshot` take them: each reply applied as the command of its shape, then rendered and snapshotted.
    /// Properties: whatever the fast `MEMORY_FAULT` decoder accepts equals the general JSON path's reading of
    /// the same message; nothing traps on any number.
    case client
    /// Theme files. Property: a refusal names a line.
    case theme
    /// Recordings, as files (gzip) and as their inflated lines, replayed to the middle and the end, and
    /// snapshotted as JSON (the renderer is the client target's).
    case recording
    /// Raw tracepoint recordings (`vmscope trace --load-raw`, a file from a ticket): layouts and records from the
    /// file, decoded with each other. Properties: a refusal names the file; what is accepted writes back to text
    /// that reads as the same recording, and every decoded event serialises.
    case rawTrace = "raw-trace"

    public func run(_ bytes: UnsafeBufferPointer<UInt8>) {
        switch self {
        case .server: Self.server(Array(bytes))
        case .client: Self.client(Array(bytes))
        case .theme: Self.theme(Array(bytes))
        case .recording: Self.recording(Array(bytes))
        case .rawTrace: Self.rawTrace(Array(bytes))
        }
    }

    public func run(_ bytes: [UInt8]) { bytes.withUnsafeBufferPointer { run($0) } }

    // MARK: Server

    /// One VMM and server for the whole run (the server thread is not started: `respond` stands in for it).
    nonisolated(unsafe) private static var served: (vmm: ReferenceVMM, server: ControlServer, listener: UnixListener)?

    /// Starts the VMM the server target needs; nil with the reason when it cannot (no /dev/kvm).
    public static func prepareServer() -> String? {
        if served != nil { return nil }
        var c = VMMConfiguration()
        c.vcpus = 2
        c.ramSize = 64 << 20
        c.allowMutations = true
        c.allowFaultInjection = true
        let quiet = Logger(label: "fuzz") { _ in SwiftLogNoOpLogHandler() }
        do {
            let vmm = try ReferenceVMM(c, logger: quiet)
            let path = NSTemporaryDirectory() + "vmscope-fuzz-\(getpid()).sock"
            let listener = try UnixListener(path: path)
            let server = ControlServer(vmm: vmm, listener: listener, logger: quiet)
            vmm.start()
            served = (vmm, server, listener)
            return nil
        } catch {
            return "the server target needs a reference VMM: \(error)"
        }
    }

    static func server(_ input: [UInt8]) {
        if served == nil, let why = prepareServer() { fatalError(why) }
        let output = served!.server.respond(to: input)
        for line in output.split(separator: 0x0A) {
            var bytes = Array(line)
            guard let j = try? JSON.parse(bytes: &bytes), case .object = j else {
                fatalError("the server sent a line that is not a JSON object: \(String(decoding: line.prefix(200), as: UTF8.self))")
            }
            switch QMP.Message(j) {
            case .greeting, .reply, .error, .event: break
            case .command, .unknown: fatalError("the server sent neither greeting, reply, error nor event: \(j.serialized.prefix(200))")
            }
        }
    }

    // MARK: Client

    static func client(_ input: [UInt8]) {
        // Chunk sizes from the input itself, so the fuzzer also explores where reads split messages.
        let chunk = 1 + Int(input.first ?? 0) * 7
        var lines = Framer(maxMessage: 1 << 16, parsesLines: true)
        var plain = Framer(maxMessage: 1 << 16)
        var model = InspectorModel(faultCapacity: 64)
        // The values each framer gave (nil: a message that is not JSON, or one too long): the framer that parses
        // whole lines must give what the byte-by-byte one gives, in order (it may wait longer for a newline).
        var fromLines: [JSON?] = [], fromPlain: [JSON?] = []
        var i = 0
        while i < input.count {
            let piece = input[i..<min(i + chunk, input.count)]
            for frame in lines.feed(piece) {
                switch frame {
                case .parsed(let d):
                    let tree = d.json
                    fromLines.append(tree)
                    // A document reads as its tree reads.
                    if Event(message: d) != Event(message: tree) {
                        fatalError("a document and its tree read differently: \(String(decoding: d.bytes.prefix(200), as: UTF8.self))")
                    }
                    if let batch = FaultBatch(event: d) { model.apply(faults: batch, nowNs: 1) } else { applySession(tree, to: &model) }
                case .message(var m):
                    let e = try? JSON.parse(bytes: &m)
                    fromLines.append(e)
                    if let e { applySession(e, to: &model) }
                case .tooLong: fromLines.append(nil)
                }
            }
            for frame in plain.feed(piece) {
                switch frame {
                case .message(var m): fromPlain.append(try? JSON.parse(bytes: &m))
                case .tooLong: fromPlain.append(nil)
                case .parsed: fatalError("a framer that does not parse lines gave a parsed line")
                }
            }
            i += chunk
        }
        guard fromLines.count <= fromPlain.count, zip(fromLines, fromPlain).allSatisfy({ $0 == $1 }) else {
            fatalError("the framers disagree: \(fromLines.map { $0?.serialized ?? "-" }) against \(fromPlain.map { $0?.serialized ?? "-" })")
        }
        _ = Renderer().render(model, InspectorUI(), width: 80, height: 24)
        // One more pane focused, chosen by the input (every pane each time cost the fuzzer most of its speed).
        var ui = InspectorUI()
        ui.focus = Pane(rawValue: Int(input.last ?? 0) % Pane.allCases.count) ?? .map
        _ = Renderer().render(model, ui, width: 120, height: 40)
        _ = Snapshot.json(model, takenAtWallNs: .max, origin: .live)
        if input.count % 8 == 0 { _ = Snapshot.text(model, ascii: false) }
    }

    /// One message of a session as the inspector would take it: the greeting, an event, or a reply applied as
    /// the query of its shape.
    static func applySession(_ m: JSON, to model: inout InspectorModel) {
        switch QMP.Message(m) {
        case .greeting: _ = ControlPeer(greeting: m)
        case .event: model.apply(event: m, nowNs: 1)
        case .reply(let r, _):
            switch ReplyShape(of: r) {
            case .snapshot?: model.apply(snapshot: r)
            case .vm?: model.apply(vm: r)
            case .attributes?: model.apply(attributes: r)
            case .memslots?: model.apply(memslots: r)
            case .vcpus?: model.apply(vcpus: r, intervalNs: 1)
            case nil: break
            }
        case .command, .error, .unknown: break
        }
    }

    // MARK: Theme

    static func theme(_ input: [UInt8]) {
        do { _ = try Theme.parse(String(decoding: input, as: UTF8.self), file: "fuzz.json") } catch {
            guard error.description.contains("fuzz.json") else { fatalError("a theme refusal without the file: \(error)") }
        }
    }

    // MARK: Recording

    static func recording(_ input: [UInt8]) {
        for parsed in [try? Recording.parse(input), try? Recording.parse(inflated: input)] {
            guard let r = parsed else { continue }
            var replay = Replay(r, file: "fuzz")
            replay.seek(to: r.durationNs / 2)
            replay.seek(to: .max)
            _ = Snapshot.json(replay.model, takenAtWallNs: replay.wallNs(at: replay.positionNs), origin: .recording(file: "fuzz", offsetNs: replay.positionNs))
            // The TUI's playback and its keys, with the clock anywhere (its arithmetic met times near 2^64).
            var model = InspectorModel()
            for now: UInt64 in [0, 1 << 62, .max - 1] {
                let source = RecordingSource(replay: Replay(r, file: "fuzz"), speed: 100, nowNs: now)
                for c: ReplayControl in [.skip(seconds: 10), .nextBurst, .togglePause, .skip(seconds: -10), .previousBurst, .togglePause] {
                    _ = source.poll(&model, nowNs: now.saturatingAdd(1_000_000_000))
                    _ = source.control(c, nowNs: .max)
                }
                _ = source.poll(&model, nowNs: .max)
                _ = source.timeline
                _ = source.viewTimeNs(nowNs: .max)
            }
        }
    }

    // MARK: Raw trace recordings

    static func rawTrace(_ input: [UInt8]) {
        let recording: RawTraceRecording
        do { recording = try RawTraceRecording(text: String(decoding: input, as: UTF8.self), name: "fuzz.raw") } catch {
            guard error.description.hasPrefix("fuzz.raw") else { fatalError("a raw-trace refusal without the file: \(error)") }
            return
        }
        guard let again = try? RawTraceRecording(text: recording.text, name: "again"), again == recording else {
            fatalError("an accepted raw recording does not read back from its own text")
        }
        let events = recording.decoded()
        for e in events { _ = e.json.serialized }
        // Paired as `trace --load-raw --paired-only` pairs it (the kernel's pairings where its layouts name them).
        var pairing = TracePairing(tracesConversions: TracePairing.tracesConversions(recording.layouts), complete: false,
                                   faultsPairedInKernel: TracePairing.faultsPairedInKernel(recording.layouts))
        var paired: [TracePairing.Paired] = []
        pairing.apply(events, into: &paired)
        paired += pairing.drain()
        for p in paired { _ = p.json.serialized }
        _ = pairing.mapJSON()?.serialized
    }
}
