import ControlProtocol
import Foundation
import Inspector

/// The terminal around an `InspectorDriver`: `vmscope attach` (a socket's source) and `vmscope replay` (a
/// recording's) run this one loop. It paints, follows the theme files, and does what needs the host: snapshot
/// files (`S`) and a background recorder (`R`).
final class InspectorSession {
    let driver: InspectorDriver
    var themes: ThemeFollower
    var renderer: Renderer
    /// `R`'s recording, while it runs.
    private var recording: SessionRecording?
    /// What to print once the terminal is back (a recording stopped by q or a signal: where its file is).
    private(set) var exitMessages: [String] = []
    /// `demo --story`'s guided tour, while it runs.
    var tour: Tour?

    /// `background`: the source is polled and acted on off the UI thread (every live source; replay's is a file).
    init(source: any VMSource, themes: ThemeCatalog, themeOrder: [String], ascii: Bool, readOnly: Bool, background: Bool = true) {
        self.themes = ThemeFollower(themes)
        renderer = Renderer(ascii: ascii)
        driver = InspectorDriver(source: source, ui: InspectorUI(themeNames: themeOrder, ascii: ascii, readOnly: readOnly),
                                 background: background && source.timeline == nil)
    }

    var ui: InspectorUI {
        get { driver.ui }
        set { driver.ui = newValue }
    }

    private func stopRecording() {
        if let r = recording { exitMessages.append(r.stop()); recording = nil }
    }

    /// The effects the driver leaves to the host; false to quit.
    private func perform(_ effect: Effect) -> Bool {
        switch effect {
        case .quit:
            stopRecording()
            return false
        case .snapshot:
            ui.status = writeSnapshotFiles(driver.model, origin: driver.source.origin, ascii: ui.ascii)
        case .toggleRecording:
            if let r = recording {
                recording = nil
                ui.recording = nil
                ui.status = (r.stop(), false)
            } else if let peer = driver.source.recordedFromModel {
                // A stock QEMU: what the inspector sees of it, recorded from its model.
                let path = sessionFilePath("recording", "jsonl.gz")
                do {
                    let r = try BackgroundModelRecording(path: path, socket: peer.socket, greeting: peer.greeting, model: driver.model,
                                                         recorder: "vmscope attach (R)")
                    recording = r
                    ui.recording = RecordingStatus(file: path, startedNs: r.startedNs)
                    ui.status = ("recording to \(path) (QEMU: the views and the traced faults); R stops", false)
                } catch {
                    ui.status = ("cannot record: \(error)", true)
                }
            } else {
                switch driver.source.recordingSocket {
                case .failure(let why): ui.status = ("cannot record: \(why)", true)
                case .success(let socket):
                    let path = sessionFilePath("recording", "jsonl.gz")
                    do {
                        let r = try BackgroundRecording(socket: socket, path: path)
                        recording = r
                        ui.recording = RecordingStatus(file: path, startedNs: r.startedNs)
                        ui.status = ("recording to \(path); R stops", false)
                    } catch {
                        ui.status = ("cannot record: \(error)", true)
                    }
                }
            }
        case .act, .readMemslot, .replay:
            break   // the driver's
        }
        return true
    }

    /// Gives the terminal back, then says what the user must still know (a recording q or a signal stopped:
    /// where its file is).
    func close(_ terminal: Terminal) {
        terminal.close()
        for line in exitMessages { print("vmscope: \(line)") }
    }

    /// Runs until `q` (or `:quit`, or a signal).
    func run(terminal: Terminal) {
        // However the loop ends, the source's worker stops first (within 0.5 s; a round trip in flight is left to
        // the process's exit), so that whoever closes the source has it to themselves.
        defer { driver.stop() }
        while true {
            var ui = driver.ui
            themes.follow(&ui, on: terminal)
            driver.ui = ui
            let now = HostClock.monotonicNs()
            let (w, h) = terminal.size
            if let r = recording, let outcome = r.finished {
                // It ended on its own (the VMM went away, a write failed): say so.
                recording = nil
                self.ui.recording = nil
                self.ui.status = (outcome, !outcome.hasPrefix("recording finished"))
                driver.invalidate()
            }
            if var t = tour, let (say, actions) = t.advance(nowNs: now, vcpuCount: driver.model.vcpus.count) {
                // The tour acts as the keys would, through the source's typed actions.
                self.ui.narration = say
                for a in actions { driver.act(a) }
                tour = t.finished ? nil : t
                driver.invalidate()
            }
            let changed = driver.tick(nowNs: now, width: w, height: h)
            (recording as? BackgroundModelRecording)?.offer(driver.model)
            if changed {
                terminal.paint(driver.frame(&renderer, width: w, height: h, nowNs: now))
            }
            if Terminal.interrupted.load(ordering: .relaxed) != 0 {
                stopRecording()
                return
            }
            guard let first = terminal.readKey() else { continue }
            for key in [first] + terminal.typedKeys() where key != .resize {
                for effect in driver.handle(key, nowNs: HostClock.monotonicNs()) where !perform(effect) { return }
            }
            driver.invalidate()
        }
    }
}
