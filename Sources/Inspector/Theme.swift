import ControlProtocol

/// A terminal colour: the terminal's default, one of the eight ANSI colours, or (256-colour terminals) an index.
public struct ThemeStyle: Sendable, Equatable {
    public var fg: Int = -1
    public var bg: Int = -1
    /// Used instead of fg/bg where the terminal has 256 colours.
    public var fg256: Int?
    public var bg256: Int?
    public var bold = false
    public var reverse = false
    public var underline = false
    public var dim = false
    public init() {}
}

/// Colours for every role, from `themes/NAME.json`.
public struct Theme: Sendable, Equatable {
    public var name: String
    public var styles: [Role: ThemeStyle]

    public struct LoadError: Error, Equatable, CustomStringConvertible {
        public var file: String
        public var line: Int
        public var reason: String
        public var description: String { "\(file):\(line): \(reason)" }
    }

    static let colourNames = ["default": -1, "black": 0, "red": 1, "green": 2, "yellow": 3, "blue": 4, "magenta": 5, "cyan": 6, "white": 7]

    /// Parses a theme file. Every role must be given; unknown roles, colours or attributes are errors naming their line.
    public static func parse(_ text: String, file: String) throws(LoadError) -> Theme {
        let bytes = Array(text.utf8)
        func line(at offset: Int) -> Int { 1 + bytes.prefix(offset).filter { $0 == 0x0A }.count }
        func line(of needle: String) -> Int {
            guard let r = text.range(of: "\"\(needle)\"") else { return 1 }
            return 1 + text[..<r.lowerBound].filter { $0 == "\n" }.count
        }
        let root: JSON
        do { root = try JSON.parse(text) } catch {
            throw LoadError(file: file, line: line(at: error.offset), reason: error.reason)
        }
        // A theme file's own members (not the protocol's, whose members only Schema reads).
        let top = Dictionary(root.objectMembers ?? [], uniquingKeysWith: { first, _ in first })
        guard let roles = top["roles"]?.objectMembers else {
            throw LoadError(file: file, line: 1, reason: "a theme is an object with \"name\" and \"roles\"")
        }
        var theme = Theme(name: top["name"]?.stringValue ?? file, styles: [:])
        for (key, value) in roles {
            guard let role = Role(rawValue: key) else {
                throw LoadError(file: file, line: line(of: key), reason: "unknown role \"\(key)\" (roles: \(Role.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            guard let members = value.objectMembers else {
                throw LoadError(file: file, line: line(of: key), reason: "role \"\(key)\" must be an object like {\"fg\": \"blue\"}")
            }
            var st = ThemeStyle()
            for (k, v) in members {
                switch k {
                case "fg", "bg":
                    guard let name = v.stringValue, let c = colourNames[name] else {
                        throw LoadError(file: file, line: line(of: key), reason: "\(key).\(k): colour must be one of \(colourNames.keys.sorted().joined(separator: ", "))")
                    }
                    if k == "fg" { st.fg = c } else { st.bg = c }
                case "fg256", "bg256":
                    guard let n = v.intValue, (0...255).contains(n) else {
                        throw LoadError(file: file, line: line(of: key), reason: "\(key).\(k) must be 0...255")
                    }
                    if k == "fg256" { st.fg256 = n } else { st.bg256 = n }
                case "attrs":
                    guard let list = v.arrayValue else {
                        throw LoadError(file: file, line: line(of: key), reason: "\(key).attrs must be a list, e.g. [\"bold\"], not a \(v.typeName)")
                    }
                    for a in list {
                        switch a.stringValue {
                        case "bold": st.bold = true
                        case "reverse": st.reverse = true
                        case "underline": st.underline = true
                        case "dim": st.dim = true
                        default: throw LoadError(file: file, line: line(of: key), reason: "\(key).attrs: bold, reverse, underline or dim")
                        }
                    }
                default:
                    throw LoadError(file: file, line: line(of: key), reason: "\(key): unknown member \"\(k)\" (fg, bg, fg256, bg256, attrs)")
                }
            }
            theme.styles[role] = st
        }
        if let missing = Role.allCases.first(where: { theme.styles[$0] == nil }) {
            throw LoadError(file: file, line: 1, reason: "role \"\(missing.rawValue)\" is missing")
        }
        return theme
    }

    /// Black and white: attributes only (NO_COLOR, or terminals without colour).
    public static let mono: Theme = {
        var t = Theme(name: "mono", styles: [:])
        for r in Role.allCases {
            var st = ThemeStyle()
            switch r {
            case .focusedTitle, .header, .title, .warning, .error, .statusError: st.bold = true
            case .cursor, .selection, .statusBar, .privatePage: st.reverse = true
            case .dim, .outside, .border, .sharedPage: st.dim = true
            case .changed, .faulted: st.underline = true; st.bold = true
            default: break
            }
            t.styles[r] = st
        }
        return t
    }()
}
