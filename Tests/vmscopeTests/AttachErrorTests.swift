import Foundation
import ProcessSupport
import Testing

struct AttachErrorTests {
    @Test func aMissingSocketIsOneLineAndExitTwo() throws {
        let r = try Binary.run(["attach", "/tmp/vmscope-no-such-\(getpid()).sock"])
        #expect(r.status == 2)
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("cannot attach") && r.stderr.contains("No such file"))
        #expect(!r.stdout.contains("\u{1B}["), "the terminal was not touched")
    }

    @Test func aSocketThatIsNotQMPIsOneLineAndExitTwo() throws {
        let path = NSTemporaryDirectory() + "vmscope-notqmp-\(getpid()).sock"
        unlink(path)
        // Something that speaks, but not QMP.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = ["-c", """
            import socket, sys
            s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1)
            c, _ = s.accept(); c.sendall(b"220 hello, this is SMTP\\r\\n"); c.recv(100)
            """, path]
        try server.run()
        defer { server.terminate(); unlink(path) }
        for _ in 0..<200 where !FileManager.default.fileExists(atPath: path) { usleep(10_000) }
        let r = try Binary.run(["attach", path])
        #expect(r.status == 2)
        #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("cannot attach"), "\(r.stderr)")
    }
}
