import CTraceFS
import Foundation
import HostTracing
import Testing

/// The libtraceevent structs vmscope reads without their header (CTraceFS.h declares their leading members, so the
/// build needs no -dev package) agree with the installed header: compiled here with the system's C compiler
/// against `<traceevent/event-parse.h>`, each offset compared with the Swift view of ours.
@Suite struct LibraryABITests {
    static let header = "/usr/include/traceevent/event-parse.h"

    @Test(.enabled(if: FileManager.default.fileExists(atPath: header),
                   "libtraceevent's header is not installed (Debian's libtraceevent-dev; .ci/run installs it)"))
    func ourDeclarationsMatchTheHeader() throws {
        let dir = NSTemporaryDirectory() + "vmscope-abi-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = """
            #include <stdio.h>
            #include <stddef.h>
            #include <traceevent/event-parse.h>
            #include <traceevent/kbuffer.h>
            int main(void) {
                printf("kbuffer.lsize8 %d\\nkbuffer.little %d\\n", (int)KBUFFER_LSIZE_8, (int)KBUFFER_ENDIAN_LITTLE);
                printf("record.ts %zu\\nrecord.missed_events %zu\\nrecord.size %zu\\nrecord.data %zu\\n",
                       offsetof(struct tep_record, ts), offsetof(struct tep_record, missed_events),
                       offsetof(struct tep_record, size), offsetof(struct tep_record, data));
                printf("event.id %zu\\nevent.fields %zu\\n", offsetof(struct tep_event, id),
                       offsetof(struct tep_event, format) + offsetof(struct tep_format, fields));
                printf("field.next %zu\\nfield.name %zu\\nfield.offset %zu\\nfield.size %zu\\n",
                       offsetof(struct tep_format_field, next), offsetof(struct tep_format_field, name),
                       offsetof(struct tep_format_field, offset), offsetof(struct tep_format_field, size));
                return 0;
            }
            """
        try source.write(toFile: dir + "/abi.c", atomically: true, encoding: .utf8)
        let cc = ["/usr/bin/cc", "/usr/bin/gcc"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let compiler = try #require(cc, "no C compiler")
        let build = Process()
        build.executableURL = URL(fileURLWithPath: compiler)
        build.arguments = ["-o", dir + "/abi", dir + "/abi.c"]
        try build.run()
        build.waitUntilExit()
        try #require(build.terminationStatus == 0, "cc failed")
        let run = Process(), out = Pipe()
        run.executableURL = URL(fileURLWithPath: dir + "/abi")
        run.standardOutput = out
        try run.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        run.waitUntilExit()
        var header: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = Int(parts[1]) { header[String(parts[0])] = v }
        }
        let ours: [String: Int?] = [
            "kbuffer.lsize8": Int(CTRACEFS_KBUFFER_LSIZE_8), "kbuffer.little": Int(CTRACEFS_KBUFFER_ENDIAN_LITTLE),
            "record.ts": MemoryLayout<ctracefs_record>.offset(of: \.ts),
            "record.missed_events": MemoryLayout<ctracefs_record>.offset(of: \.missed_events),
            "record.size": MemoryLayout<ctracefs_record>.offset(of: \.size),
            "record.data": MemoryLayout<ctracefs_record>.offset(of: \.data),
            "event.id": MemoryLayout<ctracefs_event>.offset(of: \.id),
            "event.fields": MemoryLayout<ctracefs_event>.offset(of: \.fields),
            "field.next": MemoryLayout<ctracefs_field>.offset(of: \.next),
            "field.name": MemoryLayout<ctracefs_field>.offset(of: \.name),
            "field.offset": MemoryLayout<ctracefs_field>.offset(of: \.offset),
            "field.size": MemoryLayout<ctracefs_field>.offset(of: \.size),
        ]
        #expect(header.count == ours.count, "\(text)")
        for (name, offset) in ours {
            #expect(header[name] == offset, "\(name): header \(header[name].map(String.init) ?? "?"), ours \(offset.map(String.init) ?? "?")")
        }
    }
}
