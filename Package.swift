// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "vmscope",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "vmscope", targets: ["vmscope"]),
        .executable(name: "vmscope-bench", targets: ["vmscope-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-algorithms", from: "1.2.1"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        // The Prometheus exposition (`--metrics`): swift-prometheus's registry, served by Hummingbird (HTTP/1 on
        // SwiftNIO: header limits, idle timeouts). Hummingbird's default traits pull swift-configuration in: off.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        // Hummingbird's own transport, named for the handlers the metrics endpoint adds to its pipeline.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        // `Errno`, the one errno type from KVM's ioctls up to a client's error reply (already in the graph: NIO uses it).
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // C shim, KVM half: the variadic ioctl and the UAPI structs newer than the 6.1 system headers.
        .target(name: "CKVM"),
        // C shim, terminal half: ncursesw's macros and globals Swift cannot import.
        .target(name: "CNcurses", linkerSettings: [.linkedLibrary("ncursesw")]),
        // Typed handles over /dev/kvm, VM and vCPU file descriptors.
        .target(name: "KVM", dependencies: ["CKVM", .product(name: "SystemPackage", package: "swift-system")]),
        // A minimal 32-bit x86 assembler and the built-in guest program written with it.
        .target(name: "GuestCode"),
        // The control protocol's one schema: JSON, QMP framing, and every command, reply, event and enumeration as
        // Swift types. The VMM and every client import it.
        .target(name: "Schema", swiftSettings: optimizedInEveryBuild),
        // The reference VMM: memory model, attribute engines, built-in guest, vCPU threads.
        .target(name: "VMM", dependencies: [
            "KVM", "GuestCode", "CKVM", "Schema",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Algorithms", package: "swift-algorithms"),
        ]),
        // The control protocol's transport (framing, Unix sockets) and the client every front end uses; re-exports Schema.
        .target(name: "ControlProtocol", dependencies: ["Schema", .product(name: "DequeModule", package: "swift-collections"),
                                                        .product(name: "SystemPackage", package: "swift-system")]),
        // zlib (Debian's zlib1g-dev), for recordings.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // libtracefs and libtraceevent for the kernel-tracepoint source, loaded at run time (Debian's libtracefs1,
        // libtraceevent1): the build needs neither -dev package, and without them only tracing is unavailable.
        .target(name: "CTraceFS"),
        // Any KVM VM on the host without its VMM's help, as a library over tracefs: KVM tracepoints in a private
        // tracefs instance, decoded; every VM from KVM's debugfs and its vCPU stats (`vmscope top`, the exporter).
        // It knows nothing of the inspector: the trace source and top's view live there.
        .target(name: "HostTracing", dependencies: ["CTraceFS", "KVM", "Schema", "ProcessSupport"], swiftSettings: optimizedInEveryBuild),
        // Prometheus metrics for every KVM VM on the host (`top --metrics`) or one VMM (`vmm --metrics`): the
        // collector (what `top` samples, and `query-metrics` of vmscope VMMs) and the HTTP endpoint.
        .target(name: "Exporter", dependencies: [
            "HostTracing", "KVM", "ControlProtocol", "Schema", "ProcessSupport",
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // libvirt and libvirt-qemu, loaded at run time (dlopen: the build needs no libvirt package): a domain's
        // facts, its QEMU monitor through libvirt's passthrough, and the state changes libvirt has an API for.
        .target(name: "Libvirt"),
        // The inspector without a terminal: model, UI state, key table, headless renderer, snapshots, recordings;
        // its sources (vmscope's VMM, QEMU, a recording, KVM's tracepoints through HostTracing) and top's view.
        .target(name: "Inspector", dependencies: [
            "ControlProtocol", "CZlib", "HostTracing", "Libvirt", .product(name: "Algorithms", package: "swift-algorithms"),
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        // The control server inside the VMM process.
        .target(name: "ControlServer", dependencies: [
            "VMM", "KVM", "ControlProtocol",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        // The nested KVM lab (QEMU TCG + Linux 6.12 with KVM_SW_PROTECTED_VM): build recipe and inputs as
        // resources, the boot, and the control link between the host's socket and the VMM inside.
        .target(name: "Lab", dependencies: ["ControlProtocol", "ProcessSupport"], resources: [.copy("Resources")]),
        .executableTarget(name: "vmscope", dependencies: [
            "KVM", "CKVM", "VMM", "ControlProtocol", "ControlServer", "Inspector", "CNcurses", "Lab", "ProcessSupport", "HostTracing", "Exporter", "Libvirt",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Child processes with a clean signal mask (Foundation's Process passes blocked signals on), and a stock
        // QEMU started for tests and benchmarks.
        .target(name: "ProcessSupport"),
        // Benchmarks (`swift run -c release vmscope-bench`); a library so `swift test` can smoke-run them.
        .target(name: "Benchmarks", dependencies: [
            "VMM", "KVM", "GuestCode", "Inspector", "ControlProtocol", "ControlServer", "ProcessSupport", "HostTracing",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "vmscope-bench", dependencies: [
            "Benchmarks", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Fuzz targets (server, client, theme, recording) and their driver: libFuzzer entry points when built with
        // -sanitize=fuzzer,address -DFUZZING, else a corpus runner.
        .target(name: "FuzzTargets", dependencies: [
            "ControlProtocol", "ControlServer", "VMM", "Inspector", "HostTracing", .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "vmscope-fuzz", dependencies: ["FuzzTargets"]),
        // Helpers shared by the test targets.
        .target(name: "TestSupport", dependencies: ["KVM"], path: "Tests/TestSupport"),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "CKVM", "GuestCode", "TestSupport"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "KVM", "GuestCode", "Schema", "TestSupport"]),
        .testTarget(name: "BenchmarksTests", dependencies: ["Benchmarks", "VMM", "Inspector", "ProcessSupport", "HostTracing"]),
        .testTarget(name: "HostTracingTests", dependencies: ["HostTracing", "CTraceFS", "KVM", "Schema", "ControlProtocol", "ProcessSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "ExporterTests", dependencies: ["Exporter", "Schema"]),
        .testTarget(name: "LibvirtTests", dependencies: ["Libvirt"]),
        .testTarget(name: "InspectorTests", dependencies: ["Inspector", "ControlProtocol", "Schema"], exclude: ["Fixtures"]),
        .testTarget(name: "ControlTests", dependencies: ["ControlProtocol", "Schema", "ControlServer", "VMM", "TestSupport", "Inspector"]),
        .testTarget(name: "FuzzTargetsTests", dependencies: ["FuzzTargets"], exclude: ["Corpus"]),
        .testTarget(name: "vmscopeTests", dependencies: ["vmscope", "KVM", "VMM", "ProcessSupport", "ControlProtocol", "Inspector", "Lab", "Libvirt", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)

/// The modules every traced event and every protocol message goes through are optimised in debug builds too: the
/// README runs `swift run vmscope` (a debug build), and unoptimised they cost 7-8 times the instructions an event
/// (callgrind, `trace --load-raw --paired-only` of records saved in the lab), which in the lab was most of what
/// tracing cost the guest. Still built with -enable-testing, so tests reach their internals as before.
var optimizedInEveryBuild: [SwiftSetting] { [.unsafeFlags(["-O"], .when(configuration: .debug))] }
