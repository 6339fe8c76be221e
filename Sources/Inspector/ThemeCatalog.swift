import Foundation

/// Theme files by name, each read and parsed the first time it is asked for (a start reads only the chosen one),
/// at most `maxFileBytes` each.
public final class ThemeCatalog {
    public init() {}
    /// A theme is about a kilobyte; a file past this is refused unread.
    public static let maxFileBytes = 64 << 10
    private var paths: [String: String] = [:]
    private var loaded: [String: Theme] = ["mono": .mono]
    private var problems: [String: String] = [:]

    public func offer(_ name: String, path: String) { paths[name] = path }
    public func add(_ theme: Theme) { loaded[theme.name] = theme }
    public func has(_ name: String) -> Bool { paths[name] != nil || loaded[name] != nil }
    public var names: [String] { Set(paths.keys).union(loaded.keys).sorted() }

    /// The theme, parsed now if it was not yet; nil when it cannot be (`problem` says why).
    public subscript(name: String) -> Theme? {
        if let t = loaded[name] { return t }
        guard problems[name] == nil, let path = paths[name] else { return nil }
        switch Self.load(path) {
        case .success(let t): loaded[name] = t; return t
        case .failure(let why): problems[name] = why.description; return nil
        }
    }

    public func problem(_ name: String) -> String? { problems[name] }

    /// Why a theme file was refused, as one line naming the file.
    public struct Refusal: Error, CustomStringConvertible { public var description: String }

    /// One theme file: refused by name when it is too big, not UTF-8, or not a theme.
    public static func load(_ path: String) -> Result<Theme, Refusal> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            return .failure(Refusal(description: errno == ENOENT ? "theme file \(path) does not exist" : "theme \(path): \(String(cString: strerror(errno)))"))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return .failure(Refusal(description: "theme \(path): not a regular file")) }
        guard st.st_size <= maxFileBytes else {
            return .failure(Refusal(description: "theme \(path): \(st.st_size) bytes; a theme file is at most \(maxFileBytes >> 10) KiB"))
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, $0.count - got) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            got += n
        }
        guard let text = String(validating: bytes[0..<got], as: UTF8.self) else {
            return .failure(Refusal(description: "theme \(path): not UTF-8 text"))
        }
        do { return .success(try Theme.parse(text, file: path)) } catch { return .failure(Refusal(description: "theme \(error.description)")) }
    }
}
