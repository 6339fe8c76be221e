import CTraceFS
import Foundation
@testable import HostTracing
import Testing

/// A session's libtraceevent handle holds the formats of the events it decodes and nothing else: the whole of
/// tracefs (every system's formats, /proc/kallsyms, the printk formats) was most of `vmscope top --once`'s CPU.
struct EventFormatsTests {
    static let tracing: String? = (try? TraceSession.tracingDirectory()).flatMap {
        FileManager.default.fileExists(atPath: $0 + "/events/kvm/kvm_userspace_exit/format") ? $0 : nil
    }

    @Test(.enabled(if: tracing != nil, "needs tracefs with KVM's events and libtracefs (root; .ci/run installs the libraries)"))
    func theHandleHoldsOnlyTheEventsAskedFor() throws {
        let fs = try TraceLibraries.api()
        let dir = try #require(Self.tracing)
        let tep = try TraceSession.eventFormats(fs, dir: dir, events: [("kvm", "kvm_userspace_exit"), ("kvm", "no_such_event")])
        defer { fs.tep_free(tep) }
        let exit = try #require(fs.tep_find_event_by_name(tep, "kvm", "kvm_userspace_exit"))
        var names: [String] = []
        var f = exit.pointee.fields
        while let field = f { names.append(String(cString: field.pointee.name)); f = field.pointee.next }
        #expect(names.contains("reason") && names.contains("errno"), "\(names)")
        // The id is the kernel's, as the buffer's records carry it.
        let id = try String(contentsOfFile: dir + "/events/kvm/kvm_userspace_exit/id", encoding: .utf8)
        #expect(Int(exit.pointee.id) == Int(id.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(fs.tep_find_event_by_name(tep, "kvm", "kvm_mmio") == nil, "an event not asked for")
        #expect(fs.tep_find_event_by_name(tep, "sched", "sched_switch") == nil, "another system's event")
    }
}
