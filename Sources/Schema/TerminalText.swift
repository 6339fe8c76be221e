/// Text from a peer, a file or another process (a VM's name, QEMU's `-name`, a process name, a raw trace's kernel or
/// event names) as it may reach a terminal: control characters (C0, DEL, C1), ESC among them, shown as escapes
/// (`\e`, `\n`, `\t`, `\x7f`, `\u{9b}`), never acted on. Every text output and the TUIs' cells go through it.
public func terminalSafe(_ text: String) -> String {
    // The common case, no control character, costs one pass over the bytes and no copy.
    var clean = true
    var previous: UInt8 = 0
    for b in text.utf8 {
        if b < 0x20 || b == 0x7F || (previous == 0xC2 && b >= 0x80 && b <= 0x9F) { clean = false; break }
        previous = b
    }
    if clean { return text }
    var out = ""
    out.reserveCapacity(text.utf8.count + 8)
    for u in text.unicodeScalars {
        switch u.value {
        case 0x1B: out += "\\e"
        case 0x0A: out += "\\n"
        case 0x0D: out += "\\r"
        case 0x09: out += "\\t"
        case 0x00..<0x20, 0x7F: out += "\\x" + (u.value < 0x10 ? "0" : "") + String(u.value, radix: 16)
        case 0x80...0x9F: out += "\\u{" + String(u.value, radix: 16) + "}"
        default: out.unicodeScalars.append(u)
        }
    }
    return out
}
