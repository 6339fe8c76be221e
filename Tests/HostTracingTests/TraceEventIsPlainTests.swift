import Testing
@testable import HostTracing

/// A tracer copies each event several times between the kernel's page and its consumers (the read's list, the
/// time-ordered release, the pairings): a `TraceEvent` stays a plain value, copied as bytes, with no reference
/// counting (a String in it made each copy a call that checked which case it held).
struct TraceEventIsPlainTests {
    @Test func aTraceEventIsCopiedAsBytes() {
        #expect(_isPOD(TraceEvent.self))
    }
}
