import ArgumentParser
import Lab
import ControlProtocol
import Foundation
import Inspector
import HostTracing
import Libvirt

/// Options shared by `attach` and `demo`.
struct InspectorOptions: ParsableArguments {
    @Option(help: "Colour theme: a name from themes/ (default, high-contrast, light, mono) or a path to a .json file.")
    var theme = "default"
    @Flag(help: "ASCII glyphs instead of Unicode blocks (automatic when the locale is not UTF-8).") var ascii = false
    @Flag(help: "Hide and refuse conversions, injections and vCPU control.") var readOnly = false
    @Flag(help: "On a VM vmscope did not start (a stock QEMU): pause, resume and inject without asking each time.")
    var allowControl = false

    /// Where theme files are looked for by name.
    static func themeDirectories() -> [String] {
        var dirs: [String] = []
        if let d = ProcessInfo.processInfo.environment["VMSCOPE_THEMES"] { dirs.append(d) }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        dirs.append(exe.appendingPathComponent("../../../themes").standardized.path)   // a checkout's .build/<triple>/<config>
        dirs.append(exe.appendingPathComponent("../share/vmscope/themes").standardized.path)
        dirs.append(FileManager.default.currentDirectoryPath + "/themes")
        return dirs
    }

    /// Every theme found, the chosen one first; problems (bad files, a missing choice) as messages.
    /// The themes on offer, only the chosen one parsed now (the others when `t` cycles to them), and what was
    /// wrong with the choice.
    func loadThemes() -> (themes: ThemeCatalog, order: [String], problems: [String]) {
        let catalog = ThemeCatalog()
        var problems: [String] = []
        var order: [String] = []
        for dir in Self.themeDirectories() {
            for file in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() where file.hasSuffix(".json") {
                let name = String(file.dropLast(5))
                if catalog.has(name) && name != "mono" { continue }
                catalog.offer(name, path: dir + "/" + file)
                if !order.contains(name) { order.append(name) }
            }
        }
        var chosen = theme
        if theme.contains("/") || theme.hasSuffix(".json") {
            switch ThemeCatalog.load(theme) {
            case .success(let t): chosen = t.name; catalog.add(t)
            case .failure(let why): problems.append(why.description); chosen = "default"
            }
        } else if !catalog.has(theme) {
            problems.append("no theme named \(theme) (have: \(catalog.names.joined(separator: ", ")))")
            chosen = "default"
        }
        if catalog[chosen] == nil {
            if let why = catalog.problem(chosen) { problems.append(why) }
            chosen = "mono"
        }
        if !order.contains("mono") { order.append("mono") }
        order.removeAll { $0 == chosen }
        return (catalog, [chosen] + order, problems)
    }

    var useASCII: Bool {
        if ascii { return true }
        let env = ProcessInfo.processInfo.environment
        let locale = env["LC_ALL"].flatMap { $0.isEmpty ? nil : $0 } ?? env["LC_CTYPE"].flatMap { $0.isEmpty ? nil : $0 } ?? env["LANG"] ?? ""
        let l = locale.lowercased()
        return !(l.contains("utf-8") || l.contains("utf8"))
    }

    /// A trace-only inspector on `pid` (the tracefs instance is set up before the terminal is touched).
    func inspect(tracing pid: Int32) throws {
        var err = StandardError()
        let session: TraceSession
        do { session = try TraceSession(pid: pid, pairInKernel: .ioctlResults) } catch {
            print("vmscope: cannot trace \(pid): \(error)", to: &err)
            throw ExitCode(2)
        }
        defer { session.close() }
        try run(TraceSource(session: session), readOnly: true)
    }

    /// The terminal around a source until quit (with `tour`, guided by it).
    private func run(_ source: any VMSource, readOnly: Bool, note: String? = nil, tour: Tour? = nil) throws {
        var err = StandardError()
        let (themes, order, problems) = loadThemes()
        for p in problems { print("vmscope: \(p); using \(order[0])", to: &err) }
        let session = InspectorSession(source: source, themes: themes, themeOrder: order, ascii: useASCII, readOnly: readOnly)
        session.ui.allowControl = allowControl
        session.tour = tour
        if let note { session.ui.status = (note, false); session.ui.noteUntilKey = true }
        if let p = problems.first { session.ui.status = ("\(p); using theme \(order[0])", true) }
        let terminal = Terminal(theme: themes[order[0]] ?? .mono)
        session.run(terminal: terminal)
        session.close(terminal)
        let signal = Terminal.interrupted.load(ordering: .relaxed)
        if signal != 0 { throw ExitCode(128 + signal) }
    }

    /// A libvirt domain (`libvirt:NAME`): connects to libvirt and checks the domain before the terminal is touched,
    /// each failure one line naming it (exit 2).
    func inspect(libvirt domainName: String, uri: String) throws {
        var err = StandardError()
        let source: LibvirtSource
        do {
            let connection = try LibvirtConnection(uri: uri)
            source = try LibvirtSource(domain: try connection.domain(domainName))
        } catch {
            print("vmscope: cannot attach to libvirt:\(domainName): \(error)", to: &err)
            throw ExitCode(2)
        }
        // QEMU's faults from KVM's tracepoints, on QEMU's pid (libvirt's pid file), as a direct attach does.
        let traced = TracedSocketSource(socket: source)
        defer { traced.close() }
        try run(traced, readOnly: readOnly, note: "libvirt domain \(source.domain.name): \(source.libvirtLine)")
    }

    /// Connects (before the terminal is touched), then runs the UI until quit.
    func inspect(socket: String, note: String? = nil, tour: Tour? = nil) throws {
        var err = StandardError()
        let client: ControlClient
        do { client = try ControlClient(path: socket, timeoutMs: 3000, decodeFaults: true) } catch {
            print("vmscope: cannot attach to \(socket): \(error)", to: &err)
            throw ExitCode(2)
        }
        // On a stock QEMU the faults pane comes from KVM's tracepoints (root only; otherwise the pane says why not).
        let source = TracedSocketSource(socket: SocketSource(path: socket, client: client))
        defer { source.close() }
        try run(source, readOnly: readOnly, note: tour == nil ? note : nil, tour: tour)
    }
}

/// `vmscope attach SOCKET`: the inspector on a live VM (vmscope's VMM, or QEMU's QMP socket).
struct AttachCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attach",
        abstract: "Open the inspector on a VMM's control socket (vmscope vmm, or a QEMU QMP socket).")

    @Argument(help: "The control socket, or libvirt:DOMAIN (a libvirt-managed QEMU, by name or UUID).") var socket: String?
    @Option(name: .customLong("trace"), help: "Instead of a socket: watch this VMM process through KVM's tracepoints (any VMM; needs root).")
    var tracePid: Int32?
    @Option(name: .customLong("connect"), help: "The libvirt URI for libvirt:DOMAIN.")
    var libvirtURI = LibvirtConnection.defaultURI
    @OptionGroup var options: InspectorOptions

    func validate() throws {
        guard (socket == nil) != (tracePid == nil) else { throw ValidationError("give a control socket, libvirt:DOMAIN or --trace PID (one of them)") }
        if let socket, socket.hasPrefix("libvirt:"), socket.count == "libvirt:".count { throw ValidationError("libvirt: needs a domain name or UUID (libvirt:NAME)") }
    }

    func run() throws {
        if let socket, socket.hasPrefix("libvirt:") {
            try options.inspect(libvirt: String(socket.dropFirst("libvirt:".count)), uri: libvirtURI)
        } else if let socket {
            try options.inspect(socket: socket)
        } else if let tracePid {
            try options.inspect(tracing: tracePid)
        }
    }
}

/// `vmscope demo`: the reference VMM (mutations and injection allowed) and the inspector on it, in one command.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Start the reference VMM with mutations and fault injection allowed, and attach the inspector to it.")

    @Option(help: "Number of vCPUs.") var vcpus = 2
    @Option(help: "Guest RAM, e.g. 256M.") var ram = "256M"
    @Flag(help: "Run the VMM inside the nested KVM lab, on the kernel engine (real KVM_EXIT_MEMORY_FAULT); see vmscope lab.")
    var lab = false
    @Flag(help: "A guided tour for a newcomer (about a minute): convert, fault, policy pause, resume, each step said on screen.")
    var story = false
    @Option(help: .hidden) var storySpeed = 1.0
    @OptionGroup var options: InspectorOptions

    func run() throws {
        var err = StandardError()
        if lab, let why = Lab.unavailable() {
            print("vmscope demo --lab: \(why)", to: &err)
            throw ExitCode(2)
        }
        // Demos killed outright (SIGKILL) leave their directory; the next demo removes them.
        removeAbandonedDemoDirectories()
        // A private directory for the socket and the VMM's log.
        var template = Array((NSTemporaryDirectory() + "vmscope-demo-XXXXXX").utf8CString)
        guard let dirPointer = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            print("vmscope demo: mkdtemp: \(String(cString: strerror(errno)))", to: &err)
            throw ExitCode(2)
        }
        let dir = String(cString: dirPointer)
        let socket = dir + "/vm.sock", logPath = dir + "/vmm.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        defer {
            try? FileManager.default.removeItem(atPath: dir)
        }
        let vmm = Process()
        vmm.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        // In the lab, `vmscope lab run` boots it and serves its socket here; stopping that stops the lab.
        vmm.arguments = [lab ? "lab" : "vmm", lab ? "run" : "", "--socket", socket, "--vcpus", String(vcpus), "--ram", ram,
                         "--name", "demo", "--allow-mutations", "--allow-fault-injection"].filter { !$0.isEmpty }
            + (lab ? [] : ["--exit-with-parent", String(getpid())])
        if lab { print("vmscope demo --lab: booting the lab (QEMU TCG, \(Lab.Kernel.preferred) with KVM_X86_SW_PROTECTED_VM): a few seconds", to: &err) }
        vmm.standardOutput = FileHandle.nullDevice
        vmm.standardError = FileHandle(forWritingAtPath: logPath)
        vmm.standardInput = FileHandle.nullDevice
        try vmm.run()
        defer {
            if vmm.isRunning { vmm.terminate(); vmm.waitUntilExit() }
        }
        var up = false
        for _ in 0..<(lab ? 60_000 : 3000) where !up && vmm.isRunning {
            up = FileManager.default.fileExists(atPath: socket)
            if !up { usleep(10_000) }
        }
        guard up else {
            vmm.waitUntilExit()
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            print("vmscope demo: the VMM did not start:\n\(log)", to: &err)
            throw ExitCode(2)
        }
        // Other tools (vmscope ctl, snapshot, record) can use the demo's VM while it runs: say where it is.
        try options.inspect(socket: socket, note: "demo VM socket: \(socket) (for vmscope ctl, snapshot, record)"
                                + (lab ? "; lab console: vmscope lab's log in \(logPath)" : ""),
                            tour: story ? Tour(speed: storySpeed) : nil)
    }
}

/// `vmscope-demo-*` directories of this user that no demo uses any more: their VMM's socket is stale (nobody
/// listens) or gone, and the directory is over a minute old (a demo starting now has not made its socket yet).
func removeAbandonedDemoDirectories() {
    let tmp = NSTemporaryDirectory()
    for name in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] where name.hasPrefix("vmscope-demo-") {
        let dir = tmp + (tmp.hasSuffix("/") ? "" : "/") + name
        var st = stat()
        guard lstat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, st.st_uid == getuid(),
              time(nil) - st.st_mtim.tv_sec > 60 else { continue }
        if UnixListener.isStale(path: dir + "/vm.sock") ?? true { try? FileManager.default.removeItem(atPath: dir) }
    }
}
