import Schema
/// What a cell means; themes turn roles into colours and attributes.
public enum Role: String, Sendable, CaseIterable, Codable {
    case normal, title, focusedTitle = "focused-title", border, header, dim, highlight, changed
    case privatePage = "private", sharedPage = "shared", mixed, faulted, cursor, selection, outside
    case statusBar = "status-bar", statusOK = "status-ok", statusError = "status-error", warning, error
    case dialog
}

public struct Cell: Sendable, Equatable {
    public var char: Character
    public var role: Role
    public init(_ char: Character, _ role: Role = .normal) { self.char = char; self.role = role }
}

/// A rectangle of the screen.
public struct Rect: Sendable, Equatable {
    public var x: Int, y: Int, width: Int, height: Int
    public init(x: Int, y: Int, width: Int, height: Int) { self.x = x; self.y = y; self.width = width; self.height = height }
    public var inner: Rect { Rect(x: x + 1, y: y + 1, width: max(0, width - 2), height: max(0, height - 2)) }
}

/// The headless screen: a grid of cells the ncurses backend paints as is.
public struct Screen: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public private(set) var cells: [Cell]

    public init(width: Int, height: Int) {
        self.width = max(0, width)
        self.height = max(0, height)
        cells = Array(repeating: Cell(" "), count: self.width * self.height)
    }

    public subscript(x: Int, y: Int) -> Cell {
        get { cells[y * width + x] }
        set { if x >= 0 && y >= 0 && x < width && y < height { cells[y * width + x] = newValue } }
    }

    /// Every cell's character as ASCII: line drawing and dots as their ASCII look-alikes, any other non-ASCII
    /// character as `?` (for terminals and logs that take nothing else).
    public mutating func toASCII() {
        for i in cells.indices where !(cells[i].char.isASCII) {
            cells[i].char = Self.asciiLookAlike[cells[i].char] ?? "?"
        }
    }

    static let asciiLookAlike: [Character: Character] = [
        "│": "|", "║": "|", "‖": "|", "─": "-", "═": "-", "┌": "+", "┐": "+", "└": "+", "┘": "+", "├": "+", "┤": "+",
        "·": ".", "…": ".", "—": "-", "–": "-", "×": "x", "▶": ">", "→": ">", "←": "<", "●": "*", "█": "#", "▓": "#",
        "▒": "+", "░": ".", "▀": "^", "▄": "_", "▁": "_", "▂": "_", "▃": "_", "▅": "=", "▆": "=", "▇": "#", "µ": "u",
    ]

    /// Writes `text` from (x, y), clipped to `limit` columns (and the screen).
    public mutating func put(_ text: String, x: Int, y: Int, role: Role = .normal, limit: Int = .max) {
        guard y >= 0 && y < height else { return }
        var cx = x
        // A peer's text never acts on the terminal, nor cuts a line or a box edge: control characters are shown.
        for ch in terminalSafe(text) {
            if cx - x >= limit || cx >= width { break }
            if cx >= 0 { cells[y * width + cx] = Cell(ch, role) }
            cx += 1
        }
    }

    public mutating func fill(_ r: Rect, _ ch: Character = " ", role: Role = .normal) {
        for yy in max(0, r.y)..<min(height, r.y + r.height) {
            for xx in max(0, r.x)..<min(width, r.x + r.width) { cells[yy * width + xx] = Cell(ch, role) }
        }
    }

    /// A box with a title on its top edge.
    public mutating func box(_ r: Rect, title: String, focused: Bool, ascii: Bool) {
        guard r.width >= 2 && r.height >= 2 else { return }
        let (h, v, tl, tr, bl, br): (Character, Character, Character, Character, Character, Character) =
            ascii ? ("-", "|", "+", "+", "+", "+") : ("─", "│", "┌", "┐", "└", "┘")
        let role: Role = focused ? .focusedTitle : .border
        for xx in r.x..<(r.x + r.width) {
            self[xx, r.y] = Cell(h, role)
            self[xx, r.y + r.height - 1] = Cell(h, role)
        }
        for yy in r.y..<(r.y + r.height) {
            self[r.x, yy] = Cell(v, role)
            self[r.x + r.width - 1, yy] = Cell(v, role)
        }
        self[r.x, r.y] = Cell(tl, role)
        self[r.x + r.width - 1, r.y] = Cell(tr, role)
        self[r.x, r.y + r.height - 1] = Cell(bl, role)
        self[r.x + r.width - 1, r.y + r.height - 1] = Cell(br, role)
        put(" \(title) ", x: r.x + 2, y: r.y, role: focused ? .focusedTitle : .title, limit: r.width - 4)
    }

    /// The text of each row, trailing spaces removed (for tests and `capture`-style output).
    public var lines: [String] {
        (0..<height).map { y in
            var s = String(cells[(y * width)..<(y * width + width)].map(\.char))
            while s.last == " " { s.removeLast() }
            return s
        }
    }

    public var text: String { lines.joined(separator: "\n") }
}

/// Numbers as the views print them.
public enum Fmt {
    public static func hex(_ v: UInt64, width: Int = 0) -> String {
        let s = String(v, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// 4096 → "4K", 2 MiB → "2M", 1.5 GiB → "1.5G".
    public static func size(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
        for (u, name) in units where bytes >= u {
            if bytes % u == 0 { return "\(bytes / u)\(name)" }
            let v = Double(bytes) / Double(u)
            return v >= 100 ? "\(Int(v))\(name)" : String(format1(v)) + name
        }
        return "\(bytes)B"
    }

    /// A size never rounded, for what an action will do: the largest unit that divides it (`4352K` for 0x440000,
    /// which `size` shows as `4.3M`), else bytes.
    public static func exactSize(_ bytes: UInt64) -> String {
        for (u, name) in [(UInt64(1) << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")] where bytes >= u && bytes % u == 0 {
            return "\(bytes / u)\(name)"
        }
        return "\(bytes)B"
    }

    static func format1(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    public static func pad(_ s: String, _ n: Int) -> String {
        s.count >= n ? String(s.prefix(n)) : s + String(repeating: " ", count: n - s.count)
    }

    public static func padLeft(_ s: String, _ n: Int) -> String {
        s.count >= n ? String(s.suffix(n)) : String(repeating: " ", count: n - s.count) + s
    }

    /// Parses "0x100000", "1048576", "2M", "4K", "1G".
    public static func parseSize(_ text: String) -> UInt64? {
        let t = text.trimmingCharacters(in: " ")
        if t.lowercased().hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        if let last = t.uppercased().last, let u = units[last], let n = UInt64(t.dropLast()) {
            let (v, o) = n.multipliedReportingOverflow(by: u)
            return o ? nil : v
        }
        return UInt64(t)
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}
