import ControlProtocol
import Foundation
import Inspector

/// `vmscope attach`'s loop: keeps the model fed from the control socket, the UI state from the keys, and the
/// terminal painted from the headless renderer.
final class InspectorSession {
    let path: String
    var client: ControlClient?
    var model = InspectorModel()
    var ui: InspectorUI
    var themes: ThemeFollower
    var renderer: Renderer
    /// Set while the peer is a stock QEMU: what to poll there and how actions map onto its commands.
    var qemu: QEMUSource?
    private var lastVCPUQuery: UInt64 = 0
    private var lastReconnect: UInt64 = 0
    private var reconnectDelayMs: UInt64 = 100
    private var dirty = true
    /// When the connection was lost (cleared once a reconnection has said what the gap cost).
    private var disconnectedAt: UInt64?
    /// `R`'s recording, while it runs.
    private var recording: BackgroundRecording?
    private var lastPaint: UInt64 = 0

    init(path: String, client: ControlClient, themes: ThemeCatalog, themeOrder: [String], ascii: Bool, readOnly: Bool) {
        self.path = path
        self.client = client
        self.themes = ThemeFollower(themes)
        renderer = Renderer(ascii: ascii)
        ui = InspectorUI(themeNames: themeOrder, ascii: ascii, readOnly: readOnly)
        connected(client)
    }

    private func connected(_ c: ControlClient) {
        let previousPid = model.vm.pid
        let lastSeq = model.visibleFaults.last?.seq
        client = c
        reconnectDelayMs = 100
        model.memslotsStale = true
        model.attributesStale = true
        // Perhaps another VM, or the same one restarted: no facts or rates carried over from the old one.
        model.vm = VMInfo()
        model.vcpus = []
        model.previousVCPUs = []
        model.connection = .connected(c.peer.name)
        switch c.peer {
        case .vmscope:
            model.unavailable = [:]
            qemu = nil
            refreshVM()
        case .qemu:
            var source = QEMUSource(greeting: c.greeting)
            do { try source.start(execute(c), model: &model, nowNs: HostClock.monotonicNs(), pid: c.serverPID) } catch { failed(error) }
            qemu = source
        }
        if let since = disconnectedAt { ui.status = gapReport(since: since, previousPid: previousPid, lastSeq: lastSeq) }
        disconnectedAt = nil
    }

    /// What the bottom line says after a reconnection: how long the views were blind, and what went by (a
    /// stock QEMU has no fault stream to have missed, but it may be another process).
    private func gapReport(since: UInt64, previousPid: Int?, lastSeq: UInt64?) -> (text: String, isError: Bool) {
        let seconds = String(format: "%.1f", Double(HostClock.monotonicNs() - since) / 1e9)
        if let previousPid, let pid = model.vm.pid, pid != previousPid {
            let afresh = qemu == nil ? "the VMM restarted (pid \(previousPid) → \(pid)); its counters and fault seq start afresh"
                : "QEMU restarted (pid \(previousPid) → \(pid)); its counters start afresh"
            return ("reconnected after \(seconds) s: \(afresh)", true)
        }
        if qemu != nil { return ("reconnected after \(seconds) s to the same QEMU (pid \(model.vm.pid.map(String.init) ?? "?"))", false) }
        if let lastSeq, let total = call("query-memory-faults", .object([("limit", .i(0))]))?["total"]?.uint64Value, total > lastSeq {
            return ("reconnected after \(seconds) s: \(total - lastSeq) fault records went by unseen (seq \(lastSeq + 1)–\(total))", true)
        }
        return ("reconnected after \(seconds) s; no fault records missed", false)
    }

    /// `client.execute` as a QEMUSource calls it.
    private func execute(_ c: ControlClient) -> QEMUSource.Execute {
        { name, args in try c.execute(name, args, timeoutMs: 5000) }
    }

    /// A query failed: a refused command is shown, anything else means the connection is gone.
    private func failed(_ error: any Error) {
        if let e = error as? ControlClientError, case .command(let c, let d) = e {
            ui.status = ("\(c): \(d)", true)
        } else {
            disconnected("\(error)")
        }
    }

    private func call(_ name: String, _ args: JSON? = nil) -> JSON? {
        guard let client else { return nil }
        do { return try client.execute(name, args, timeoutMs: 5000) } catch {
            if case .command = error { return nil }
            disconnected("\(error)")
            return nil
        }
    }

    private func disconnected(_ why: String) {
        client?.close()
        client = nil
        if disconnectedAt == nil { disconnectedAt = HostClock.monotonicNs() }
        model.connection = .disconnected(why)
        dirty = true
    }

    private func refreshVM() {
        if let vm = call("query-vm") { model.apply(vm: vm) }
    }

    /// One pass: events, due queries, reconnection. Returns whether anything changed.
    private func poll(now: UInt64) {
        guard let client else {
            if now - lastReconnect > reconnectDelayMs * 1_000_000 {
                lastReconnect = now
                do { connected(try ControlClient(path: path, timeoutMs: 500, decodeFaults: true)) } catch {
                    reconnectDelayMs = min(reconnectDelayMs * 2, 2000)
                    model.connection = .disconnected("\(error) (next try in \(reconnectDelayMs) ms)")
                }
                dirty = true
            }
            return
        }
        var n = 0
        while n < 10_000, let e = client.nextItem(timeoutMs: 0) {
            switch e {
            case .faults(let batch): model.apply(faults: batch, nowNs: now)
            case .json(let j):
                model.apply(event: j, nowNs: now)
                qemu?.apply(event: j, model: &model)
            }
            n += 1
        }
        if n > 0 { dirty = true }
        if !client.isConnected { disconnected("the VMM went away"); return }
        if var source = qemu {
            do { if try source.poll(execute(client), model: &model, nowNs: now) { dirty = true } } catch { failed(error) }
            qemu = source
            return
        }
        if model.memslotsStale, let j = call("query-memslots") { model.apply(memslots: j); dirty = true }
        if model.attributesStale, let j = call("query-memory-attributes") { model.apply(attributes: j); dirty = true }
        if now - lastVCPUQuery > 100_000_000, let j = call("query-vcpus") {
            model.apply(vcpus: j, intervalNs: lastVCPUQuery == 0 ? 1 : now - lastVCPUQuery)
            lastVCPUQuery = now
            if now - lastPaint > 900_000_000 { dirty = true }
            if model.vcpus != model.previousVCPUs { dirty = true }
        }
    }

    private func perform(_ effect: Effect) -> Bool {
        switch effect {
        case .quit:
            if let r = recording { _ = r.stop(); recording = nil }
            return false
        case .snapshot:
            ui.status = writeSnapshotFiles(model, origin: .live, ascii: ui.ascii)
        case .toggleRecording:
            if let r = recording {
                recording = nil
                ui.recording = nil
                ui.status = (r.stop(), false)
            } else if qemu != nil {
                ui.status = ("cannot record: recording needs vmscope's VMM (QEMU has no query-snapshot, and this inspector holds its monitor)", true)
            } else {
                let path = sessionFilePath("recording", "jsonl.gz")
                do {
                    let r = try BackgroundRecording(socket: self.path, path: path)
                    recording = r
                    ui.recording = RecordingStatus(file: path, startedNs: r.startedNs)
                    ui.status = ("recording to \(path); R stops", false)
                } catch {
                    ui.status = ("cannot record: \(error)", true)
                }
            }
        case .replay:
            ui.status = ("that key moves a replay's timeline (vmscope replay FILE)", true)
        case .readMemslot(let row):
            guard let slot = Renderer.memslot(atRow: row, model, ui.memslotSort) else { return true }
            ui.overlay = .hexDump(gpa: slot.gpa, bytes: nil)
            return perform(.readMemory(gpa: slot.gpa))
        case .readMemory(let gpa) where qemu != nil:
            guard let client else { ui.overlay = nil; return true }
            do { ui.overlay = .hexDump(gpa: gpa, bytes: try qemu!.readMemory(execute(client), gpa: gpa)) } catch {
                ui.overlay = nil
                ui.status = ("read \(Fmt.hex(gpa)): \(error)", true)
            }
        case .readMemory(let gpa):
            if let r = call("read-memory", .object([("gpa", .u(gpa)), ("size", .u(4096)), ("view", .string("auto"))])),
               let data = r["data"]?.stringValue, let bytes = Data(base64Encoded: data) {
                ui.overlay = .hexDump(gpa: gpa, bytes: Array(bytes))
            } else {
                ui.overlay = nil
                ui.status = ("read-memory \(Fmt.hex(gpa)) failed", true)
            }
        case .execute(var name, var args, var description):
            guard let client else { ui.status = ("\(description): not connected", true); return true }
            if let qemu {
                switch qemu.translate(name, args) {
                case .refuse(let why): ui.status = ("\(description): refused: \(why)", true); return true
                case .run(let n, let a, let d): (name, args, description) = (n, a ?? .object([]), d)
                }
            }
            do {
                let r = try client.execute(name, args, timeoutMs: 10_000)
                var detail = ""
                if let d = r["detail"]?.stringValue { detail = ": \(d)" }
                if let ns = r[Wire.durationNs.name]?.uint64Value { detail = " in \(ns / 1000) µs" }
                ui.status = ("\(description): done\(detail)", false)
                model.attributesStale = true
                model.memslotsStale = true
                lastVCPUQuery = 0
                qemu?.refreshSoon()
            } catch {
                if case .command(let c, let d) = error { ui.status = ("\(description): \(c): \(d)", true) }
                else { ui.status = ("\(description): \(error)", true); disconnected("\(error)") }
            }
        }
        return true
    }

    /// Runs until `q` (or `:quit`).
    func run(terminal: Terminal) {
        while true {
            themes.follow(&ui, on: terminal)
            let now = HostClock.monotonicNs()
            poll(now: now)
            let (w, h) = terminal.size
            ui.fit(model, width: w, height: h)
            // Fading fault marks need repaints while they fade.
            if !model.recentFaults.isEmpty && now - lastPaint > 100_000_000 { dirty = true }
            if dirty {
                renderer.nowNs = now
                terminal.paint(renderer.render(model, ui, width: w, height: h))
                lastPaint = now
                dirty = false
            }
            if let r = recording, let outcome = r.finished {
                // It ended on its own (the VMM went away, a write failed): say so.
                recording = nil
                ui.recording = nil
                ui.status = (outcome, !outcome.hasPrefix("recording finished"))
                dirty = true
            }
            if recording != nil && now - lastPaint > 1_000_000_000 { dirty = true }   // the REC clock
            if Terminal.interrupted.load(ordering: .relaxed) != 0 {
                if let r = recording { _ = r.stop(); recording = nil }
                return
            }
            guard let first = terminal.readKey() else { continue }
            dirty = true
            for key in [first] + terminal.typedKeys() where key != .resize {
                for effect in ui.handle(key) where !perform(effect) { return }
            }
        }
    }
}
