@testable import Schema
import ControlProtocol
import ControlServer
import Foundation
import Testing
import TestSupport
import VMM

/// A client that negotiates and then reads (and discards) everything, on its own thread.
final class Reader: @unchecked Sendable {
    let conn: LineConnection
    private let thread: Thread

    init(_ path: String) throws {
        let c = try LineConnection(path: path)
        try c.send(#"{"execute":"qmp_capabilities"}"#)
        conn = c
        thread = Thread { while (try? c.readLine(timeoutMs: -1)) != nil {} }
        thread.start()
    }

    func stop() { conn.shutdown() }
}

@Suite(.serialized, .enabled(if: kvmPresent, "/dev/kvm does not exist on this machine"))
struct ServerTests {
    @Test func greetingNegotiationAndEveryCommandsReplyShape() throws {
        let s = try Served { $0.allowMutations = true; $0.allowFaultInjection = true }
        defer { s.stop() }
        let c = try LineClient(s.path)
        let greeting = try c.reply()
        #expect(greeting["QMP"]?["capabilities"] == .array([]))
        #expect(greeting["QMP"]?["version"]?["qemu"]?["major"] == .int(0))
        #expect(greeting["vmscope"]?["protocol"] == .int(1))

        let early = try c.call(#"{"execute":"query-vm","id":7}"#)
        #expect(errorClass(early) == "CommandNotFound")
        #expect(early["id"] == .int(7))
        #expect(try c.call(#"{"execute":"qmp_capabilities","id":{"x":[1]}}"#) == .object([("return", .object([])), ("id", .object([("x", .array([.int(1)]))]))]))
        #expect(errorClass(try c.call(#"{"execute":"qmp_capabilities"}"#)) == "CommandNotFound")

        let names = try #require(try c.call(#"{"execute":"query-commands"}"#)["return"]?.arrayValue).compactMap { $0["name"]?.stringValue }
        for n in ["query-vm", "query-memslots", "query-memory-attributes", "set-memory-attributes", "query-vcpus",
                  "query-memory-faults", "vcpu-control", "inject-fault", "read-memory", "set-fault-policy", "query-version"] {
            #expect(names.contains(n), "query-commands lacks \(n)")
        }
        let version = try c.call(#"{"execute":"query-version"}"#)["return"]
        #expect(version?["package"]?.stringValue?.hasPrefix("vmscope") == true)

        let vm = try #require(try c.call(#"{"execute":"query-vm"}"#)["return"])
        #expect(vm["attribute-engine"] == .string("vmm"))
        #expect(vm["shared-alias"] == .int(31))
        #expect(vm["ram-size"] == .int(64 << 20))
        #expect(vm["vcpus"] == .int(2))
        #expect(vm["pid"] == .int(Int64(getpid())))
        #expect(vm["mutations-allowed"] == .bool(true))
        // The host's own answer (HostKVM asks KVM_CHECK_EXTENSION), never a remembered one.
        #expect(vm["kvm-capabilities"]?["KVM_CAP_GUEST_MEMFD"] == .bool(try #require(HostKVM.capabilities).guestMemfd))

        let slots = try #require(try c.call(#"{"execute":"query-memslots"}"#)["return"]?.arrayValue)
        #expect(slots.count == s.vmm.memslots.count)
        for key in ["slot", "as-id", "gpa", "size", "flags", "flag-names", "view", "backing", "guest-memfd-offset", "userspace-addr"] {
            #expect(slots[0][key] != nil, "memslot lacks \(key)")
        }
        // Private RAM in a guest_memfd where a default VM offers one, else in a memfd that says so.
        #expect(slots[0]["flag-names"] == .array(HostKVM.guestMemfd ? [.string("GUEST_MEMFD")] : []))
        #expect(slots[0]["backing"] == .string(HostKVM.vmmPrivateBacking))

        let converted = try c.call(#"{"execute":"set-memory-attributes","arguments":{"gpa":33554432,"size":8192,"private":false},"id":"c"}"#)
        #expect(converted["return"]?["runs-changed"]?.intValue ?? 0 >= 1)
        #expect(converted["return"]?["duration-ns"]?.uint64Value != nil)
        let attrs = try #require(try c.call(#"{"execute":"query-memory-attributes","arguments":{"gpa":33550336,"size":16384}}"#)["return"])
        #expect(attrs["runs"] == .array([
            .object([("gpa", .int(33550336)), ("size", .int(4096)), ("private", .bool(true))]),
            .object([("gpa", .int(33554432)), ("size", .int(8192)), ("private", .bool(false))]),
            .object([("gpa", .int(33562624)), ("size", .int(4096)), ("private", .bool(true))]),
        ]))
        #expect(attrs["shared-bytes"] == .int(8192) && attrs["private-bytes"] == .int(8192))

        let vcpus = try #require(try c.call(#"{"execute":"query-vcpus"}"#)["return"]?.arrayValue)
        #expect(vcpus.count == 2)
        for key in ["index", "thread-id", "state", "last-exit", "exit-counts", "regs", "sregs", "stats"] {
            #expect(vcpus[0][key] != nil, "vcpu lacks \(key)")
        }
        #expect(vcpus[0]["regs"]?["rip"]?.uint64Value != nil)
        #expect(vcpus[0]["sregs"]?["cs"]?["selector"] == .int(8))

        let faults = try #require(try c.call(#"{"execute":"query-memory-faults","arguments":{"limit":5}}"#)["return"])
        #expect(faults["records"]?.arrayValue != nil && faults["total"] != nil && faults["dropped"] != nil)

        let paused = try c.call(#"{"execute":"vcpu-control","arguments":{"index":1,"action":"pause"}}"#)["return"]
        #expect(paused == .object([("vcpus", .array([.object([("index", .int(1)), ("state", .string("paused"))])]))]))
        let resumed = try c.call(#"{"execute":"vcpu-control","arguments":{"action":"resume"}}"#)["return"]
        #expect(resumed?["vcpus"]?.arrayValue?.count == 2)
        // The states after the resume, not before it.
        #expect(resumed?["vcpus"]?.arrayValue?.allSatisfy { $0["state"]?.stringValue == "running" } == true, "\(resumed?.serialized ?? "")")

        let read = try #require(try c.call(#"{"execute":"read-memory","arguments":{"gpa":393216,"size":16,"view":"private"}}"#)["return"])
        let bytes = try #require(Data(base64Encoded: read["data"]?.stringValue ?? ""))
        #expect(Array(bytes) == Array(s.vmm.guest.code.prefix(16)), "the guest's code at 0x60000")
        #expect(read["private"] == .bool(true))

        let injected = try c.call(#"{"execute":"inject-fault","arguments":{"kind":"flip","gpa":33554432,"size":4096}}"#)["return"]
        #expect(injected?["kind"] == .string("flip"))
        #expect(try c.call(#"{"execute":"set-fault-policy","arguments":{"policy":"report"}}"#) == .object([("return", .object([]))]))
        #expect(s.vmm.faultPolicy == .report)
    }

    /// `id` is echoed verbatim (QMP's promise), numbers included: `1e5` and 2^64 used to come back as `100000.0`
    /// and `1.8446744073709552e+19`.
    @Test func idsAreEchoedVerbatim() throws {
        let s = try Served()
        defer { s.stop() }
        let c = try LineClient(s.path)
        try c.negotiate()
        for id in ["1e5", "18446744073709551616", "-0.0", "1.50", "-9223372036854775809", "1E+2", "{\"a\":[1e1,\"\\u00e9\"]}"] {
            try c.send(#"{"execute":"query-version","id":\#(id)}"#)
            // The reply's own bytes (events the VMM sends meanwhile are skipped).
            var line = try #require(try c.conn.readLine(timeoutMs: 10_000))
            while line.starts(with: Array(#"{"event""#.utf8)) { line = try #require(try c.conn.readLine(timeoutMs: 10_000)) }
            #expect(String(decoding: line, as: UTF8.self).hasSuffix(#","id":\#(id)}"#) || id.hasPrefix("{"), "\(id)")
            var bytes = line
            #expect(try JSON.parse(bytes: &bytes)["id"] == JSON.parse(id))
        }
    }

    /// `auto` across a private|shared boundary: each page through its own view (it used to read every page
    /// through the first page's). Each page's two views hold different bytes, so a read through the wrong one shows.
    @Test func readMemoryAutoAcrossABoundaryReadsEachPageThroughItsView() throws {
        let s = try Served { $0.allowMutations = true; $0.guest.convertEvery = 0; $0.guest.wrongViewEvery = 0 }
        defer { s.stop() }
        let c = try LineClient(s.path)
        try c.negotiate()
        let a: UInt64 = 0x2000000, b = a + 4096  // a stays private, b goes shared
        #expect(try c.call(#"{"execute":"set-memory-attributes","arguments":{"gpa":\#(b),"size":4096,"private":false}}"#)["return"] != nil)
        let privateView = try #require(s.vmm.memory.currentMapping(gfn: a / 4096))
        let sharedView = try #require(s.vmm.memory.currentMapping(gfn: b / 4096))
        #expect(privateView !== sharedView)
        memset(privateView.base + Int(a), 0xAA, 4096)
        memset(sharedView.base + Int(a), 0x11, 4096)
        memset(sharedView.base + Int(b), 0x55, 4096)
        memset(privateView.base + Int(b), 0x22, 4096)
        func read(_ gpa: UInt64, _ size: Int) throws -> (bytes: [UInt8], reply: JSON) {
            let r = try #require(try c.call(#"{"execute":"read-memory","arguments":{"gpa":\#(gpa),"size":\#(size)}}"#)["return"])
            return (Array(try #require(Data(base64Encoded: r["data"]?.stringValue ?? ""))), r)
        }
        let alone = try read(a + 4000, 96).bytes + read(b, 100).bytes
        let across = try read(a + 4000, 196)
        #expect(across.bytes == alone)
        #expect(across.bytes == [UInt8](repeating: 0xAA, count: 96) + [UInt8](repeating: 0x55, count: 100))
        #expect(across.reply["private"] == .null)
        #expect(across.reply["views"] == .array([
            .object([("offset", .int(0)), ("size", .int(96)), ("private", .bool(true))]),
            .object([("offset", .int(96)), ("size", .int(100)), ("private", .bool(false))]),
        ]))
        #expect(try read(b, 16).reply["private"] == .bool(false))
    }

    @Test func badInputGetsAnErrorAndTheConnectionStillAnswers() throws {
        // The guest's own conversions off, so the layout can only change if bad input changed it.
        let s = try Served { $0.guest.convertEvery = 0; $0.guest.wrongViewEvery = 0 }
        defer { s.stop() }
        let layout = s.vmm.memslots
        let c = try LineClient(s.path)
        try c.negotiate()
        func stillAnswers(_ what: String) throws {
            let r = try c.call(#"{"execute":"query-vm","id":"after"}"#)
            #expect(r["return"]?["name"] != nil && r["id"] == .string("after"), "after \(what): \(r.serialized)")
        }
        let cases: [(String, String, String)] = [
            (#"{"execute":"no-such-command","id":1}"#, "CommandNotFound", "has not been found"),
            (#"{"execute":"set-memory-attributes","arguments":{"gpa":0,"size":4096}}"#, "GenericError", "'private' is missing"),
            (#"{"execute":"read-memory","arguments":{"gpa":-1,"size":16}}"#, "GenericError", "'gpa' expects an unsigned"),
            (#"{"execute":"read-memory","arguments":{"gpa":0,"size":16,"view":"sideways"}}"#, "GenericError", "'view' expects one of"),
            (#"{"execute":"query-vm","arguments":{"extra":1}}"#, "GenericError", "'extra' is unexpected"),
            (#"{"execute":"query-vm","arguments":[1]}"#, "GenericError", "must be an object"),
            (#"{"execute":"query-vm","bogus":true}"#, "GenericError", "'bogus' is unexpected"),
            (#"{"arguments":{}}"#, "GenericError", "lacks member 'execute'"),
            (#"{"execute":"query-vm""#, "GenericError", "JSON parse error"),
            (#"{not json}"#, "GenericError", "JSON parse error"),
            (#"[1,2,3]"#, "GenericError", "must be a JSON object"),
            (#""just a string""#, "GenericError", "must be a JSON object"),
            (#"{"execute":"set-memory-attributes","arguments":{"gpa":1,"size":4096,"private":false}}"#, "PermissionDenied", "allow-mutations"),
        ]
        for (line, cls, text) in cases {
            let r = try c.call(line)
            #expect(errorClass(r) == cls, "\(line) → \(r.serialized)")
            #expect(r["error"]?["desc"]?.stringValue?.contains(text) == true, "\(line) → \(r.serialized)")
            try stillAnswers(line)
        }
        // An over-long line: refused, discarded up to its newline, and the stream resyncs after it.
        let long = #"{"execute":"query-vm","id":""# + String(repeating: "x", count: (1 << 20) + 10) + #""}"#
        let r = try c.call(long)
        #expect(errorClass(r) == "GenericError" && r["error"]?["desc"]?.stringValue?.contains("longer than") == true)
        try stillAnswers("an over-long line")
        #expect(s.vmm.memslots == layout, "no bad input changed the layout")
    }

    @Test func mutationsNeedTheStartFlagAndReachEveryClient() throws {
        let locked = try Served()
        let c = try LineClient(locked.path)
        try c.negotiate()
        let before = try c.call(#"{"execute":"query-memory-attributes"}"#)
        let refused = try c.call(#"{"execute":"set-memory-attributes","arguments":{"gpa":2097152,"size":4096,"private":false}}"#)
        #expect(errorClass(refused) == "PermissionDenied")
        #expect(try c.call(#"{"execute":"query-memory-attributes"}"#) == before)
        #expect(errorClass(try c.call(#"{"execute":"inject-fault","arguments":{"kind":"nmi","vcpu":0}}"#)) == "PermissionDenied")
        locked.stop()

        let s = try Served { $0.allowMutations = true; $0.guest.wrongViewEvery = 0; $0.guest.convertEvery = 0 }
        defer { s.stop() }
        let a = try LineClient(s.path), b = try LineClient(s.path)
        try a.negotiate()
        try b.negotiate()
        let r = try a.call(#"{"execute":"set-memory-attributes","arguments":{"gpa":16777216,"size":65536,"private":false}}"#)
        #expect(r["return"] != nil)
        let runs = try a.call(#"{"execute":"query-memory-attributes","arguments":{"gpa":16777216,"size":65536}}"#)["return"]?["runs"]
        #expect(runs == .array([.object([("gpa", .int(16777216)), ("size", .int(65536)), ("private", .bool(false))])]))
        for client in [a, b] {
            var found: JSON?
            let deadline = Date().addingTimeInterval(5)
            while found == nil && Date() < deadline {
                found = client.events.first { $0["event"] == .string("MEMORY_ATTRIBUTES_CHANGED") }
                if found == nil, var line = try client.conn.readLine(timeoutMs: 200) {
                    client.events.append(try JSON.parse(bytes: &line))
                }
            }
            let data = try #require(found?["data"])
            #expect(data == .object([("gpa", .int(16777216)), ("size", .int(65536)), ("private", .bool(false)),
                                     ("cause", .string("command")), ("vcpu", .null)]))
            #expect(found?["timestamp"]?["seconds"]?.uint64Value ?? 0 > 1_700_000_000)
        }
    }

    /// A client that hangs up as another connects leaves its place to it: with the server busy (its thread waits for
    /// the memory lock in another client's `query-memslots`) one of two clients closes and a third connects; the next
    /// pass sees both. Accepting before letting the leaver go refused the newcomer as one too many (63 of a relay's
    /// 64 clients answered once).
    @Test func aClientLeavingAsAnotherConnectsLeavesItsPlace() throws {
        var options = ControlServer.Options()
        options.maxClients = 2
        let s = try Served(options: options) { $0.vcpus = 1 }
        defer { s.stop() }
        let busy = try LineClient(s.path), leaving = try LineClient(s.path)
        try busy.negotiate()
        try leaving.negotiate()
        // Sent no events, as an exporter that only asks: a write to it after it hung up would also let it go.
        #expect(try leaving.call(#"{"execute":"set-events","arguments":{"enabled":false}}"#)["return"] != nil)
        var newcomer: LineClient?
        try s.vmm.memory.lock.withLock {
            try busy.send(#"{"execute":"query-memslots"}"#)
            usleep(200_000)   // the server thread is in busy's command, waiting for the lock
            leaving.conn.shutdown()
            newcomer = try LineClient(s.path)
            usleep(200_000)
        }
        #expect(try busy.reply()["return"] != nil)
        let c = try #require(newcomer)
        let greeting = try c.reply()
        #expect(greeting["QMP"] != nil, "the newcomer was refused: \(greeting.serialized)")
        _ = try? c.call(#"{"execute":"qmp_capabilities"}"#)
        #expect(try c.call(#"{"execute":"query-version"}"#)["return"] != nil)
    }

    @Test func aClientThatNeverReadsCostsTheGuestNothingAndLearnsWhatItMissed() throws {
        var options = ControlServer.Options()
        options.maxPendingOutput = 64 << 10
        func faultingVM() throws -> Served {
            try Served(options: options) {
                $0.vcpus = 1
                $0.guest.wrongViewEvery = 1   // a wrong-view touch every pass: faults without pause
                $0.faultRingCapacity = 256
            }
        }
        // Two identical VMs side by side, so both see the same load from whatever else runs on the machine. Each
        // has a client that reads everything. A client that never reads sits on one VM, then on the other, in
        // eight alternating windows; scheduling noise and any bias towards one VM average out.
        let s = try faultingVM(), control = try faultingVM()
        defer { s.stop(); control.stop() }
        var readers: [Reader] = []
        for vm in [s, control] { readers.append(try Reader(vm.path)) }
        defer { for r in readers { r.stop() } }
        Thread.sleep(forTimeInterval: 0.5)
        func beats(_ vm: Served) -> UInt64 { vm.vmm.guestCounters(0).heartbeats }
        var withStuck: UInt64 = 0, without: UInt64 = 0
        var stuck: LineClient?
        var faultsDuring: UInt64 = 0
        for window in 0..<8 {
            let (target, other) = window % 2 == 0 ? (s, control) : (control, s)
            stuck?.conn.shutdown()
            let client = try LineClient(target.path)
            try client.send(#"{"execute":"qmp_capabilities"}"#)
            stuck = client
            let b = (beats(target), beats(other), target.vmm.faults.total)
            // The last window lasts until the client that stays is far behind: more records than its socket
            // buffers and the server's 64 KiB of pending output hold (~1,100), plus the 256-record ring. Under
            // load the guest faults more slowly, so this waits for the count, not for a fixed time.
            Thread.sleep(forTimeInterval: window == 7 ? 4 : 1.25)
            if window == 7 { _ = eventually(40) { target.vmm.faults.total - b.2 >= 4000 } }
            withStuck += beats(target) - b.0
            without += beats(other) - b.1
            faultsDuring = target.vmm.faults.total - b.2
        }
        let lagging = try #require(stuck)
        // Far more than the 256-record ring and the ~1,100 records the socket and pending output hold; under the
        // full suite's load on two cores the emulated guest may take longer than 40 s for 4,000 (CI saw 2,966 in
        // 24 s), which still overflows both, as `droppedTotal > 0` below checks.
        #expect(faultsDuring >= 2000, "the guest faulted \(faultsDuring) times while the client did not read (the ring holds 256)")
        // A vCPU that waited on this client would stop: the guest would stall once ~1,356 records were queued and
        // its heartbeats in these windows would be a fraction of the other VM's. What remains is the server's work
        // for the extra client, which shares this machine's two cores with both guests: up to ~12% under the full
        // suite's load (CI measured 2743 against 3116 once). That cost is a performance figure for the
        // benchmarks; here the bound separates "slower" from "blocked".
        #expect(Double(withStuck) >= Double(without) * 0.6,
                "heartbeats: \(without) beside a reading client only, \(withStuck) with one that never reads")

        // Now read everything: every gap in seq is announced as `dropped` in the batch that follows it.
        _ = try lagging.reply()   // greeting
        var last: UInt64?
        var droppedTotal: UInt64 = 0
        var gapsTotal: UInt64 = 0
        var firstDropped: UInt64 = 0
        var batches = 0
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, var line = try lagging.conn.readLine(timeoutMs: 1000) {
            let m = try JSON.parse(bytes: &line)
            guard m["event"] == .string("MEMORY_FAULT"), let data = m["data"] else { continue }
            let seqs = (data["records"]?.arrayValue ?? []).compactMap { $0["seq"]?.uint64Value }
            let dropped = data["dropped"]?.uint64Value ?? 0
            if let last, let first = seqs.first {
                #expect(first - last - 1 == dropped, "batch after seq \(last) starts at \(first) with dropped \(dropped)")
                gapsTotal += first - last - 1
            } else if last == nil {
                // The first batch: its gap is from where the client negotiated, which only the server knows.
                firstDropped = dropped
            }
            #expect(zip(seqs, seqs.dropFirst()).allSatisfy { $1 == $0 + 1 }, "no gap inside a batch")
            // Small events: a reply queued behind one waits little (on the lab's link too).
            #expect(seqs.count <= 64, "a batch of \(seqs.count) records")
            droppedTotal += dropped
            if let l = seqs.last { last = l }
            batches += 1
            if batches > 20 && control.vmm.faults.total - (last ?? 0) < 512 { break }
        }
        // It fell behind the ring (the first lost records may already precede the first batch it gets, when the
        // output it was owed before falling behind held other events only), and every loss was announced.
        #expect(droppedTotal > 0, "the client fell behind the ring (\(batches) batches)")
        #expect(droppedTotal == gapsTotal + firstDropped)
    }

    @Test func abruptClientsAndFiftyAtOnceLeaveTheOthersServed() throws {
        let s = try Served()
        defer { s.stop() }
        let steady = try LineClient(s.path)
        try steady.negotiate()
        // A client that dies mid-line.
        do {
            let dying = try LineConnection(path: s.path)
            try dying.sendBytes(Array(#"{"execute":"qmp_capab"#.utf8))
            dying.shutdown()
        }
        // Fifty at once, each negotiating and asking, then all vanishing.
        var many: [LineClient] = []
        for _ in 0..<50 { many.append(try LineClient(s.path)) }
        for c in many { try c.negotiate() }
        for c in many { #expect(try c.call(#"{"execute":"query-vm"}"#)["return"] != nil) }
        #expect(s.server.connectedClients >= 51)
        many.removeAll()
        #expect(eventually { s.server.connectedClients == 1 }, "\(s.server.connectedClients) clients still counted")
        #expect(try steady.call(#"{"execute":"query-vcpus"}"#)["return"]?.arrayValue?.count == 2)
    }

    @Test func socketIsPrivateAndOtherUsersAreRefused() throws {
        let s = try Served()
        defer { s.stop() }
        var st = stat()
        #expect(lstat(s.path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                      "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('connect', e.errno); sys.exit(0)\nprint(s.makefile().readline().strip())\nprint('eof' if s.recv(1)==b'' else 'more')",
                      s.path]
        func runAsNobody() throws -> String {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: nobody[0])
            p.arguments = Array(nobody.dropFirst())
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            p.waitUntilExit()
            return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        }
        // Mode 0600 keeps other users out before the server sees them...
        #expect(try runAsNobody().contains("connect 13"), "EACCES expected")
        // ...and if the file is opened up by mistake, SO_PEERCRED still refuses them, with a message.
        chmod(s.path, 0o666)
        let out = try runAsNobody()
        #expect(out.contains("PermissionDenied") && out.contains("uid 65534"), "\(out)")
        #expect(out.contains("eof"), "\(out)")
        let c = try LineClient(s.path)
        try c.negotiate()
        #expect(try c.call(#"{"execute":"query-vm"}"#)["return"] != nil)
    }
}
