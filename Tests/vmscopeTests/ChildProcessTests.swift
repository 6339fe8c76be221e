import Foundation
import ProcessSupport
import Testing

/// `ChildProcess` over a file just written: while any process still holds a writer's descriptor of it (here this
/// one; in a full test run, a child another thread forked meanwhile), exec fails with ETXTBSY. That passes once the
/// descriptor is closed, so the spawn waits for it a while instead of failing (QEMUWithoutKVMTests' wrapper script
/// failed so once in a full run: "Text file busy").
struct ChildProcessTests {
    @Test func aScriptStillOpenForWritingStartsOnceItIsClosed() throws {
        let path = NSTemporaryDirectory() + "vmscope-etxtbsy-\(getpid()).sh"
        defer { unlink(path) }
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        try #require(fd >= 0)
        let text = Array("#!/bin/sh\nexit 7\n".utf8)
        #expect(write(fd, text, text.count) == text.count)
        // The writer lets go 200 ms from now, on another thread.
        let closer = Thread { usleep(200_000); close(fd) }
        closer.start()
        let started = Date()
        let status = try ChildProcess.run([path])
        #expect(status == 7, "the script ran to its end")
        #expect(Date().timeIntervalSince(started) >= 0.15, "it could not have started while the file was open for writing")
    }
}
