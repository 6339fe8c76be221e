import Foundation
import FuzzTargets

// Built two ways (see docs/reliability.md):
// - with `-Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING`: libFuzzer's entry points; the target is named by
//   VMSCOPE_FUZZ_TARGET (server, client, theme, recording, raw-trace) and libFuzzer's own options follow as usual;
// - plainly: `vmscope-fuzz TARGET FILE|DIR...` runs each file through the target once (a corpus or a crash).

#if FUZZING
nonisolated(unsafe) private var target = FuzzTarget.client

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    let name = ProcessInfo.processInfo.environment["VMSCOPE_FUZZ_TARGET"] ?? ""
    guard let t = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("vmscope-fuzz: set VMSCOPE_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))\n".utf8))
        exit(2)
    }
    target = t
    if t == .server, let why = FuzzTarget.prepareServer() {
        FileHandle.standardError.write(Data("vmscope-fuzz: \(why)\n".utf8))
        exit(2)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    target.run(UnsafeBufferPointer(start: data, count: size))
    return 0
}

typealias FuzzArgv = UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>

/// libFuzzer's driver (LLVM 11+), for an executable that brings its own main.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>, _ argv: FuzzArgv,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

// SwiftPM links an executable target's entry point as `<module>_main`; libFuzzer's own main is not used.
@_cdecl("vmscope_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    var count = argc
    var vector: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = argv
    return withUnsafeMutablePointer(to: &vector) { v in
        LLVMFuzzerRunDriver(&count, v, { data, size in fuzzOne(data, size) })
    }
}
#else
@main
struct CorpusRunner {
    static func main() {
        let args = CommandLine.arguments.dropFirst()
        guard let name = args.first, let target = FuzzTarget(rawValue: name), args.count > 1 else {
            print("usage: vmscope-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) FILE|DIR...")
            exit(2)
        }
        var files: [String] = []
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                print("vmscope-fuzz: \(path) does not exist")
                exit(2)
            }
            if isDir.boolValue {
                files += ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
            } else {
                files.append(path)
            }
        }
        for f in files {
            guard let data = FileManager.default.contents(atPath: f) else { continue }
            target.run(Array(data))
        }
        print("vmscope-fuzz: \(files.count) inputs through \(name), no crash")
        exit(0)
    }
}
#endif
