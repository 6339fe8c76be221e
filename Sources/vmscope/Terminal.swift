import CNcurses
import Foundation
import Inspector
import Synchronization

/// The ncurses side: paints a `Screen` and reads keys. Everything else is headless.
final class Terminal {
    private(set) var colours = false
    /// Why the themes' colours are not used, when they are not: attributes only then.
    private(set) var colourlessReason: String?
    private var colours256 = false
    private var theme: Theme
    private var pairs: [Role: (attrs: attr_t, pair: Int16)] = [:]
    private static let active = Atomic<Bool>(false)
    /// The signal that asked the UI to stop (0: none).
    static let interrupted = Atomic<Int32>(0)

    init(theme: Theme) {
        self.theme = theme
        setlocale(LC_ALL, "")
        initscr()
        Terminal.active.store(true, ordering: .relaxed)
        cbreak()
        noecho()
        nonl()
        keypad(cnc_stdscr(), true)
        // Esc acts in 25 ms, not ncurses' default second (a user's ESCDELAY stands).
        if ProcessInfo.processInfo.environment["ESCDELAY"] == nil { set_escdelay(25) }
        timeout(50)
        curs_set(0)
        // NO_COLOR (no-color.org): present and not empty.
        if let noColor = ProcessInfo.processInfo.environment["NO_COLOR"], !noColor.isEmpty {
            colourlessReason = "NO_COLOR is set"
        } else if !has_colors() {
            colourlessReason = "the terminal has no colours"
        } else {
            start_color()
            use_default_colors()
            colours = true
            colours256 = cnc_colors() >= 256
        }
        apply(theme)
        // SIGINT/SIGTERM/SIGHUP end the loop like `q` (so the demo's VMM and directory are cleaned up too);
        // on a crash path the terminal is restored before the signal takes the process down.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig) { s in Terminal.interrupted.store(s, ordering: .relaxed) }
            sigaddset(&stopSignals, sig)
        }
        // A parent may have left them blocked (spawned processes inherit the mask); the UI must hear them.
        pthread_sigmask(SIG_UNBLOCK, &stopSignals, nil)
        for sig in [SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE] {
            signal(sig) { s in
                Terminal.restore()
                signal(s, SIG_DFL)
                raise(s)
            }
        }
    }

    /// Puts the terminal back as it was (idempotent; safe from a signal handler for our purposes).
    static func restore() {
        if active.exchange(false, ordering: .relaxed) { endwin() }
    }

    func close() { Terminal.restore() }

    var size: (width: Int, height: Int) { (Int(cnc_cols()), Int(cnc_lines())) }

    func apply(_ t: Theme) {
        theme = colours ? t : .mono
        pairs = [:]
        for (i, role) in Role.allCases.enumerated() {
            let st = theme.styles[role] ?? ThemeStyle()
            var attrs: attr_t = 0
            if st.bold { attrs |= cnc_a_bold() }
            if st.reverse { attrs |= cnc_a_reverse() }
            if st.underline { attrs |= cnc_a_underline() }
            if st.dim { attrs |= cnc_a_dim() }
            var pair: Int16 = 0
            if colours {
                pair = Int16(i + 1)
                let fg = colours256 ? (st.fg256 ?? st.fg) : st.fg
                let bg = colours256 ? (st.bg256 ?? st.bg) : st.bg
                init_pair(pair, Int16(fg), Int16(bg))
            }
            pairs[role] = (attrs, pair)
        }
        clear()
    }

    /// Paints the screen: runs of cells with one role go out as one wide string.
    func paint(_ s: Screen) {
        for y in 0..<s.height {
            var x = 0
            while x < s.width {
                let role = s[x, y].role
                var run: [wchar_t] = []
                let start = x
                while x < s.width && s[x, y].role == role {
                    for scalar in s[x, y].char.unicodeScalars { run.append(wchar_t(bitPattern: scalar.value)) }
                    x += 1
                }
                run.append(0)
                let p = pairs[role] ?? (0, 0)
                // The last cell of the screen would scroll it; ncurses returns ERR there, which is harmless.
                _ = run.withUnsafeBufferPointer { cnc_put(Int32(y), Int32(start), $0.baseAddress, p.attrs, p.pair) }
            }
        }
        refresh()
    }

    /// The keys typed already, without waiting (at most `limit`): a loop whose pass is slow (a VM in the lab
    /// answers a query in a few hundred ms) takes what was typed meanwhile at once, not one key a pass.
    func typedKeys(limit: Int = 256) -> [Key] {
        timeout(0)
        defer { timeout(50) }
        var keys: [Key] = []
        while keys.count < limit, let k = readKey() { keys.append(k) }
        return keys
    }

    /// Sleeps until something is typed or `ms` have passed; a signal (a resize, SIGINT) ends it too, and the next
    /// read then finds it. A loop with nothing to do until a deadline waits here, not in a read that wakes it every
    /// 50 ms: `top`'s table woke twenty times a second for a sample a second.
    func waitForInput(ms: Int) {
        var p = pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, Int32(clamping: max(0, ms)))
    }

    /// The next key, or nil after the input timeout (50 ms).
    func readKey() -> Key? {
        var code: Int32 = 0
        let r = cnc_get_wch(&code)
        if r == cnc_err() { return nil }
        if r == cnc_key_code_yes() {
            switch code {
            case cnc_key_up(): return .up
            case cnc_key_down(): return .down
            case cnc_key_left(): return .left
            case cnc_key_right(): return .right
            case cnc_key_ppage(): return .pageUp
            case cnc_key_npage(): return .pageDown
            case cnc_key_home(): return .home
            case cnc_key_end(): return .end
            case cnc_key_btab(): return .backTab
            case cnc_key_enter(): return .enter
            case cnc_key_backspace(): return .backspace
            case cnc_key_resize(): return .resize
            default: return nil
            }
        }
        switch code {
        case 9: return .tab
        case 10, 13: return .enter
        case 27: return .escape
        case 8, 127: return .backspace
        default:
            guard let u = Unicode.Scalar(UInt32(bitPattern: code)) else { return nil }
            return .char(Character(u))
        }
    }
}

/// Keeps the terminal's colours on the theme the UI names (`t` cycles it), applying one only when it changes.
struct ThemeFollower {
    let themes: ThemeCatalog
    private var applied: Int?

    init(_ themes: ThemeCatalog) { self.themes = themes }

    mutating func follow(_ ui: inout InspectorUI, on terminal: Terminal) {
        guard applied != ui.themeIndex else { return }
        let changed = applied != nil
        applied = ui.themeIndex
        terminal.apply(themes[ui.themeName] ?? .mono)
        if let why = themes.problem(ui.themeName) {
            ui.status = ("\(why); showing mono", true)
        } else if changed, let why = terminal.colourlessReason {
            ui.status = ("theme \(ui.themeName): attributes only, no colours (\(why))", false)
        }
    }
}
