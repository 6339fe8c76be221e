@testable import Schema
import ControlProtocol
import Foundation
import ProcessSupport
import Testing
import TestSupport

/// A libvirtd for these tests (issue 31): the one already running, or one started here from Debian's packages
/// (`.ci/run` installs them) with a configuration of the tests' own: the read-only socket open to every user, the
/// read-write one root's and libvirt's group's, and, where polkitd can run (on a D-Bus system bus these tests start
/// when the machine has none), libvirt's access control on polkit with libvirt's default policy: a user of the
/// group may connect read-write, but polkit allows only root libvirt's write permissions (polkit always allows
/// root). What the tests started is stopped when they end; each test's domain is transient and destroyed after it.
enum LibvirtFixture {
    static let directory = NSTemporaryDirectory() + "vmscope-libvirtd-\(getpid())"
    /// Whether this process started libvirtd (so its configuration is the tests' own), and virtlogd.
    nonisolated(unsafe) static var startedDaemon = false
    nonisolated(unsafe) static var startedLogger = false
    /// nil when the tests' libvirtd checks libvirt's access control on polkit; else why not.
    nonisolated(unsafe) static var aclUnavailable: String? = "libvirtd was running already, with a configuration not the tests' own"
    /// The system bus and polkitd these tests started (stopped at exit).
    nonisolated(unsafe) static var startedBusPid: Int32?
    nonisolated(unsafe) static var polkitd: ChildProcess?
    /// libvirt's socket group (Debian's libvirt-daemon-system makes it).
    static let socketGroup: gid_t? = getgrnam("libvirt").map { $0.pointee.gr_gid }

    static func virsh(_ args: [String]) -> Binary.Result {
        (try? runProcess("/usr/bin/virsh", ["-c", "qemu:///system"] + args)) ?? Binary.Result(status: -1, stdout: "", stderr: "virsh did not run")
    }

    /// nil when libvirt answers; else why these tests cannot run here.
    static let unavailable: String? = {
        guard getuid() == 0 else { return "needs root (libvirt's system daemon and /dev/kvm)" }
        guard kvmPresent else { return "/dev/kvm does not exist on this machine" }
        for path in ["/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh"] where access(path, X_OK) != 0 {
            return "\(path) is not installed (.ci/run installs libvirt-daemon-system, libvirt-daemon-driver-qemu and libvirt-clients)"
        }
        let conf = (try? String(contentsOfFile: "/etc/libvirt/qemu.conf", encoding: .utf8)) ?? ""
        let lines = conf.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        guard lines.contains("user = \"root\""), lines.contains("group = \"root\"") else {
            return "libvirt runs QEMU as libvirt-qemu, who cannot open /dev/kvm here (root-only): set user = \"root\" and group = \"root\" in /etc/libvirt/qemu.conf (.ci/run does)"
        }
        if virsh(["list"]).status == 0 { return nil }
        // A virtlogd without its socket is one going away (the previous run's, stopped as it exited): wait for it.
        if access("/run/libvirt/virtlogd-sock", F_OK) != 0 { _ = waitUntilGone("virtlogd") }
        if !running("virtlogd") {
            // A virtlogd killed outright leaves its sockets: the next one cannot bind them, and QEMU's start fails.
            for stale in ["virtlogd-sock", "virtlogd-admin-sock"] { unlink("/run/libvirt/" + stale) }
            guard daemonize("/usr/sbin/virtlogd", ["--daemon"]) == 0 else { return "virtlogd --daemon failed" }
            startedLogger = true
        }
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        aclUnavailable = startPolkit()
        var config = """
        auth_unix_ro = "none"
        auth_unix_rw = "none"
        unix_sock_ro_perms = "0777"
        unix_sock_rw_perms = "\(aclUnavailable == nil ? "0770" : "0700")"

        """
        if aclUnavailable == nil { config += "unix_sock_group = \"libvirt\"\naccess_drivers = [ \"polkit\" ]\n" }
        try? config.write(toFile: directory + "/libvirtd.conf", atomically: true, encoding: .utf8)
        guard daemonize("/usr/sbin/libvirtd", ["--daemon", "--config", directory + "/libvirtd.conf", "--pid-file", directory + "/libvirtd.pid"]) == 0 else {
            return "libvirtd --daemon failed"
        }
        startedDaemon = true
        atexit {
            // Each waited for: a run started right after this one would otherwise find them still answering, use
            // them, and lose them (QEMU's start then fails: no virtlogd socket).
            if LibvirtFixture.startedDaemon, let text = try? String(contentsOfFile: LibvirtFixture.directory + "/libvirtd.pid", encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(pid, SIGTERM)
                let deadline = Date().addingTimeInterval(10)
                while LibvirtFixture.isRunning(pid) && Date() < deadline { usleep(50_000) }
            }
            if LibvirtFixture.startedLogger {
                _ = runProcessQuietly("/usr/bin/pkill", ["-x", "virtlogd"])
                _ = LibvirtFixture.waitUntilGone("virtlogd")
            }
            _ = LibvirtFixture.polkitd?.terminate(grace: 5)
            if let bus = LibvirtFixture.startedBusPid { kill(bus, SIGTERM); unlink("/run/dbus/pid"); unlink("/run/dbus/system_bus_socket") }
        }
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if virsh(["list"]).status == 0 { return nil }
            usleep(200_000)
        }
        return "libvirtd started but does not answer: \(virsh(["list"]).stderr)"
    }()

    /// Whether `pid` runs: it exists and is not a zombie (a daemon's parent is init, and here init reaps none).
    static func isRunning(_ pid: Int32) -> Bool {
        guard let state = procStatFields(pid: pid)?.first else { return false }
        return state != "Z" && state != "X"
    }

    /// Whether a process named `name` runs (pgrep lists zombies too).
    static func running(_ name: String) -> Bool {
        ((try? runProcess("/usr/bin/pgrep", ["-x", name]))?.stdout ?? "").split(separator: "\n").compactMap { Int32($0) }.contains(where: isRunning)
    }

    /// Waits (at most 10 s) until no process named `name` runs; whether none does.
    static func waitUntilGone(_ name: String) -> Bool {
        let deadline = Date().addingTimeInterval(10)
        while running(name) {
            guard Date() < deadline else { return false }
            usleep(50_000)
        }
        return true
    }

    /// polkitd on the D-Bus system bus (started here where there is none), for libvirt's access control; nil when
    /// it answers, else why not.
    static func startPolkit() -> String? {
        for path in ["/usr/lib/polkit-1/polkitd", "/usr/bin/dbus-daemon", "/usr/bin/pkcheck"] where access(path, X_OK) != 0 {
            return "\(path) is not installed (.ci/run installs polkitd and dbus-daemon)"
        }
        guard socketGroup != nil else { return "there is no group libvirt (libvirt-daemon-system makes it)" }
        if access("/run/dbus/system_bus_socket", F_OK) != 0 || !running("dbus-daemon") {
            try? FileManager.default.createDirectory(atPath: "/run/dbus", withIntermediateDirectories: true)
            // A bus killed outright leaves both, and the next one will not start.
            unlink("/run/dbus/pid")
            unlink("/run/dbus/system_bus_socket")
            // It writes its pid to /run/dbus/pid (Debian's system.conf).
            guard daemonize("/usr/bin/dbus-daemon", ["--system", "--fork"]) == 0,
                  let pid = (try? String(contentsOfFile: "/run/dbus/pid", encoding: .utf8)).flatMap({ Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            else { return "dbus-daemon --system --fork failed" }
            startedBusPid = pid
        }
        // polkit always allows root: this asks whether polkitd answers at all.
        func answers() -> Bool {
            runProcessQuietly("/usr/bin/pkcheck", ["--action-id", "org.libvirt.api.connect.getattr", "--process", "\(getpid())"]) == 0
        }
        if !answers() {
            polkitd = try? ChildProcess(["/usr/lib/polkit-1/polkitd", "--no-debug"],
                                        redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: directory + "/polkitd.log"))
            let deadline = Date().addingTimeInterval(10)
            while !answers() {
                guard Date() < deadline else { return "polkitd does not answer: \((try? String(contentsOfFile: directory + "/polkitd.log", encoding: .utf8)) ?? "")" }
                usleep(100_000)
            }
        }
        return nil
    }

    /// Starts a daemon that forks itself away (`--daemon`), its output to /dev/null: a pipe would stay open in the
    /// daemon, and reading it to its end would wait for ever.
    static func daemonize(_ path: String, _ args: [String]) -> Int32 {
        guard let p = try? ChildProcess([path] + args, redirects: .init(stdin: "/dev/null", stdout: "/dev/null", stderr: "/dev/null")) else { return -1 }
        return p.wait(seconds: 60) ?? -1
    }

    static func runProcessQuietly(_ path: String, _ args: [String]) -> Int32 {
        (try? runProcess(path, args))?.status ?? -1
    }

    static func domainXML(_ name: String) -> String {
        """
        <domain type='kvm'>
          <name>\(name)</name>
          <memory unit='MiB'>256</memory>
          <vcpu>2</vcpu>
          <os><type arch='x86_64' machine='pc'>hvm</type></os>
          <devices><serial type='pty'/><console type='pty'/></devices>
        </domain>
        """
    }

    /// A running transient domain (2 vCPUs, 256 MiB, no disk); `destroy` it after.
    static func start(_ tag: String) throws -> String {
        let name = "vmscope-test-\(getpid())-\(tag)"
        let file = directory + "/\(name).xml"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try domainXML(name).write(toFile: file, atomically: true, encoding: .utf8)
        // The first domain of a fresh libvirtd waits for QEMU's capabilities (45 s seen here).
        let r = virsh(["create", file])
        try #require(r.status == 0, "virsh create: \(r.stderr)")
        return name
    }

    static func qemuPid(_ name: String) -> Int32? {
        (try? String(contentsOfFile: "/run/libvirt/qemu/\(name).pid", encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }
}

@Suite(.serialized, .enabled(if: LibvirtFixture.unavailable == nil, Comment(rawValue: LibvirtFixture.unavailable ?? "")))
struct LibvirtTests {
    /// The acceptance run: `attach libvirt:NAME` in tmux shows the domain's memslots (equal to info mtree -f's KVM
    /// ranges, asked through libvirt by virsh), its 2 vCPUs with registers, libvirt's state beside QEMU's; P suspends
    /// the domain through libvirt (virsh domstate says paused) and resumes it; while attached, virsh's own
    /// domstats, monitor commands, suspend and resume all work; the faults pane shows KVM's traced rows of QEMU.
    @Test func attachThroughLibvirtShowsTheDomainAndLeavesLibvirtItsMonitor() throws {
        try #require(TmuxPane.tmux != nil, "tmux is not installed (.ci/run installs it)")
        let name = try LibvirtFixture.start("attach")
        defer { _ = LibvirtFixture.virsh(["destroy", name]) }
        let pid = try #require(LibvirtFixture.qemuPid(name))
        let t = try TmuxPane("LANG=C.UTF-8 \(Binary.url.path) attach libvirt:\(name); echo VMSCOPE-EXIT=$?; sleep 60", width: 200, height: 50)
        var screen = t.waitFor(20) { $0.contains("libvirt running") && $0.contains("pc.ram") && $0.contains("rip 0x") }
        let uuid = LibvirtFixture.virsh(["domuuid", name]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(screen.contains(name) && screen.contains("connected (libvirt qemu:///system)"), "\(screen)")
        #expect(screen.contains("libvirt domain \(name): UUID \(uuid), running, booted"), "\(screen)")
        #expect(screen.contains("pid \(pid)"), "QEMU's pid, from libvirt's pid file: \(screen)")
        #expect(screen.contains("2 vCPUs (unpinned), 256 MiB, memory backing default, launch security none"), "the domain XML's facts: \(screen)")
        // Both vCPUs, with registers.
        let vcpuRows = screen.split(separator: "\n").filter { $0.contains("│   0 ") || $0.contains("│   1 ") }
        #expect(vcpuRows.count >= 2, "\(screen)")

        // P asks first (vmscope did not start this VM), then suspends the domain through libvirt.
        t.keys("4", "P")
        screen = t.waitFor(5) { $0.contains("did not start? y/N") }
        #expect(LibvirtFixture.virsh(["domstate", name]).stdout.contains("running"), "nothing before the answer")
        t.keys("y")
        screen = t.waitFor(8) { $0.contains("libvirt paused, user") && $0.contains("status paused") }
        #expect(screen.contains("virDomainSuspend") && screen.contains("libvirt paused, user"), "\(screen)")
        #expect(LibvirtFixture.virsh(["domstate", name, "--reason"]).stdout.contains("paused (user)"))
        // Paused, the memory map holds still: the memslot view lists exactly info mtree -f's KVM ranges.
        let mtree = LibvirtFixture.virsh(["qemu-monitor-command", name, "--hmp", "info mtree -f"])
        #expect(mtree.status == 0, "another client's monitor command while attached: \(mtree.stderr)")
        let ranges = try Independent.kvmRangeBounds(mtree.stdout)
        #expect(ranges.count >= 2)
        let shownRanges = ranges.map { String(format: "0x%08llx-0x%08llx", $0.start, $0.end + 1) }
        screen = t.waitFor(15) { s in shownRanges.allSatisfy { s.contains($0) } }
        for shown in shownRanges { #expect(screen.contains(shown), "\(shown) in:\n\(screen)") }
        t.keys("P")
        _ = t.waitFor(5) { $0.contains("did not start? y/N") }
        t.keys("y")
        screen = t.waitFor(8) { $0.contains("libvirt running, unpaused") && $0.contains("status running") }
        #expect(screen.contains("libvirt running, unpaused"), "\(screen)")

        // libvirt keeps its monitor and its view: virsh's own calls work while vmscope is attached.
        let stats = LibvirtFixture.virsh(["domstats", name])
        #expect(stats.status == 0 && stats.stdout.contains("state.state=1"), "\(stats.stderr)")
        #expect(LibvirtFixture.virsh(["suspend", name]).status == 0)
        screen = t.waitFor(8) { $0.contains("libvirt paused, user") }
        #expect(screen.contains("libvirt paused, user") && screen.contains("status paused"), "vmscope sees libvirt's suspend: \(screen)")
        #expect(LibvirtFixture.virsh(["resume", name]).status == 0)
        screen = t.waitFor(8) { $0.contains("libvirt running, unpaused") && $0.contains("status running") }

        // The faults pane: KVM's traced rows of QEMU (the firmware's accesses; each reset runs it again).
        if let why = tracingLibrariesMissing {
            print("LibvirtTests: the traced rows are not checked: \(why)")
        } else {
            t.keys("2")
            let deadline = Date().addingTimeInterval(30)
            screen = t.capture()
            while !screen.contains("trace/") && Date() < deadline {
                _ = LibvirtFixture.virsh(["reset", name])
                screen = t.waitFor(4) { $0.contains("trace/") }
            }
            #expect(screen.contains("trace/"), "traced rows in the faults pane: \(screen)")
        }
        t.keys("q")
        screen = t.waitFor(5) { $0.contains("VMSCOPE-EXIT=") }
        #expect(screen.contains("VMSCOPE-EXIT=0"), "\(screen)")
        // Nothing went wrong on libvirt's monitor (its log for the domain).
        let log = (try? String(contentsOfFile: "/var/log/libvirt/qemu/\(name).log", encoding: .utf8)) ?? ""
        #expect(!log.lowercased().contains("monitor error") && !log.contains("error: "), "libvirt's log:\n\(log.suffix(2000))")
    }

    /// `top --once --json` names the domain (name and UUID) beside QEMU's pid.
    @Test func topNamesLibvirtDomains() throws {
        let name = try LibvirtFixture.start("top")
        defer { _ = LibvirtFixture.virsh(["destroy", name]) }
        let pid = try #require(LibvirtFixture.qemuPid(name))
        let uuid = LibvirtFixture.virsh(["domuuid", name]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let r = try Binary.run(["top", "--once", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let vms = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])["vms"] as? [[String: Any]]
        let row = try #require(vms?.first { ($0["pid"] as? Int) == Int(pid) }, "\(r.stdout)")
        let libvirt = row["libvirt"] as? [String: Any]
        #expect(libvirt?["name"] as? String == name && libvirt?["uuid"] as? String == uuid, "\(row)")
        let plain = try Binary.run(["top", "--once"])
        // The table's name column (20 wide) shows the domain's name, marked as libvirt's where it fits.
        #expect(plain.stdout.contains(String(name.prefix(19))), "\(plain.stdout)")
    }

    /// `snapshot libvirt:NAME` validates against docs/snapshot.schema.json and carries libvirt's state and facts.
    @Test func aSnapshotThroughLibvirtValidates() throws {
        let name = try LibvirtFixture.start("snap")
        defer { _ = LibvirtFixture.virsh(["destroy", name]) }
        let r = try Binary.run(["snapshot", "libvirt:\(name)"])
        #expect(r.status == 0, "\(r.stderr)")
        let doc = try parseJSON(r.stdout)
        #expect(doc["vm"]?["name"]?.stringValue == name && doc["vm"]?["libvirt-state"]?.stringValue == "running, booted", "\(r.stdout.prefix(800))")
        #expect(doc["vm"]?["libvirt-facts"]?.stringValue?.contains("2 vCPUs (unpinned), 256 MiB") == true)
        #expect(doc["peer"]?.stringValue == "libvirt qemu:///system")
        #expect((doc["memslots"]?.arrayValue?.count ?? 0) >= 2 && doc["vcpus"]?.arrayValue?.count == 2, "\(r.stdout.prefix(800))")
        if pythonJSONSchema {
            #expect(try schemaComplaint(r.stdout) == nil)
        } else {
            print("LibvirtTests: the snapshot is not validated: python3-jsonschema is not installed (.ci/run installs it)")
        }
        let missing = try Binary.run(["snapshot", "libvirt:vmscope-no-such-\(getpid())"])
        #expect(missing.status == 2 && missing.stderr.contains("Domain not found"), "\(missing.stderr)")
    }

    /// Each error by name: one line, exit 2.
    @Test func errorsAreNamedInOneLine() throws {
        func attach(_ args: [String], as user: Bool = false) throws -> Binary.Result {
            user ? try runProcess("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", Binary.url.path, "attach"] + args)
                : try Binary.run(["attach"] + args)
        }
        func expectOneLine(_ r: Binary.Result, _ words: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(r.status == 2 && r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(words), "\(r.stderr)", sourceLocation: sourceLocation)
        }
        expectOneLine(try attach(["libvirt:vmscope-no-such-domain-\(getpid())"]), "Domain not found")
        expectOneLine(try attach(["libvirt:x", "--connect", "qemu:///system?socket=/nonexistent/libvirt-sock"]), "is libvirtd running?")
        // A defined domain that is not running.
        let name = "vmscope-test-\(getpid())-off"
        let file = LibvirtFixture.directory + "/\(name).xml"
        try LibvirtFixture.domainXML(name).write(toFile: file, atomically: true, encoding: .utf8)
        #expect(LibvirtFixture.virsh(["define", file]).status == 0)
        defer { _ = LibvirtFixture.virsh(["undefine", name]) }
        expectOneLine(try attach(["libvirt:\(name)"]), "is not running (shut off")
        // A user libvirt allows a read-only connection only (the tests' own libvirtd: its read-write socket is root's
        // and its group's).
        if LibvirtFixture.startedDaemon {
            expectOneLine(try attach(["libvirt:\(name)"], as: true), "read-only connection only")
        } else {
            print("LibvirtTests: the read-only case is not checked: libvirtd was running already, with a configuration not the tests' own")
        }
        // A user of libvirt's socket group on a libvirtd with access control: read-write, but libvirt's default polkit
        // policy gives the monitor passthrough's permission (domain write) to root only.
        if let why = LibvirtFixture.aclUnavailable {
            print("LibvirtTests: the access-control case is not checked: \(why)")
        } else if let group = LibvirtFixture.socketGroup {
            let running = try LibvirtFixture.start("acl")
            defer { _ = LibvirtFixture.virsh(["destroy", running]) }
            let r = try runProcess("/usr/bin/setpriv", ["--reuid", "65534", "--regid", "65534", "--groups", "\(group)", Binary.url.path, "attach", "libvirt:\(running)"])
            expectOneLine(r, "refused by libvirt's access control")
            #expect(!r.stderr.contains("read-only"), "the group's user has a read-write connection: \(r.stderr)")
        }
    }
}
