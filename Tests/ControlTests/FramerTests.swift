import Testing
@testable import ControlProtocol

struct FramerTests {
    func texts(_ frames: [Framer.Frame]) -> [String] {
        frames.map { f in
            switch f {
            case .message(let m): String(decoding: m, as: UTF8.self)
            case .parsed(let d): String(decoding: d.bytes, as: UTF8.self)
            case .tooLong: "<too long>"
            }
        }
    }

    @Test func splitsBackToBackObjectsWithoutNewlines() {
        var f = Framer()
        #expect(texts(f.feed(Array(#"{"a":"}{"}{"b":[1,{"c":2}]}  {"#.utf8))) == [#"{"a":"}{"}"#, #"{"b":[1,{"c":2}]}"#])
        #expect(texts(f.feed(Array(#""x":1}"#.utf8))) == [#"{"x":1}"#])
        #expect(f.pendingBytes == 0)
    }

    @Test func byteAtATimeGivesTheSameMessages() {
        let stream = "{\"execute\":\"q\",\"arguments\":{\"s\":\"a\\\"}\"}}\n[1,2]\r\n{\"id\":\n 1}"
        var f = Framer()
        var out: [Framer.Frame] = []
        for b in stream.utf8 { out += f.feed([b]) }
        #expect(texts(out) == ["{\"execute\":\"q\",\"arguments\":{\"s\":\"a\\\"}\"}}", "[1,2]", "{\"id\":\n 1}"])
    }

    @Test func invalidInputEndsAtTheNewlineAndTheStreamResyncs() {
        var f = Framer()
        let frames = texts(f.feed(Array("{bad\n42\n\"unterminated\n{\"ok\":true}\n".utf8)))
        #expect(frames == ["{bad", "42", "\"unterminated", "{\"ok\":true}"])
    }

    @Test func anUnfinishedLineEndsWhenTheNextLineCannotContinueIt() {
        var f = Framer()
        #expect(texts(f.feed(Array("{\"execute\":\"q\"\n".utf8))).isEmpty, "could still continue")
        #expect(f.hasUnfinishedLine)
        #expect(texts(f.feed(Array("{\"execute\":\"r\"}\n".utf8))) == ["{\"execute\":\"q\"", "{\"execute\":\"r\"}"])
        // A pretty-printed object across lines stays one message.
        #expect(texts(f.feed(Array("{\"execute\":\n  \"s\",\n \"arguments\":\n {}\n}".utf8))) == ["{\"execute\":\n  \"s\",\n \"arguments\":\n {}\n}"])
    }

    @Test func anUnfinishedLineCanBeFlushedAndFramingGoesOn() {
        var f = Framer()
        #expect(f.feed(Array("{\"a\":1\n{\"b\"".utf8)).isEmpty)
        #expect(texts(f.flushUnfinishedLine().map { [$0] } ?? []) == ["{\"a\":1"])
        #expect(!f.hasUnfinishedLine)
        #expect(texts(f.feed(Array(":2}".utf8))) == ["{\"b\":2}"])
    }

    @Test func overLongMessageIsDiscardedUpToTheNewline() {
        var f = Framer(maxMessage: 64)
        let long = "{\"a\":\"" + String(repeating: "x", count: 200) + "\"}\n{\"b\":1}"
        #expect(texts(f.feed(Array(long.utf8))) == ["<too long>", "{\"b\":1}"])
    }
}

extension FramerTests {
    @Test func aMegabyteInSmallChunksIsLinear() {
        var f = Framer()
        let big = Array((#"{"id":""# + String(repeating: "x", count: (1 << 20) + 10) + "\"}\n{\"a\":1}\n").utf8)
        var frames: [Framer.Frame] = []
        var i = 0
        while i < big.count {
            frames += f.feed(big[i..<min(i + 4096, big.count)])
            i += 4096
        }
        #expect(texts(frames) == ["<too long>", "{\"a\":1}"])
    }
}

extension FramerTests {
    /// An endless line from a peer: what is past the limit is dropped as it comes, not kept until a newline
    /// that may never arrive (before, every byte up to the newline was held).
    @Test func anEndlessLineIsNotKept() {
        for start in ["{\"a\":\"", "nonsense ", "{\"event\":\"MEMORY_FAULT\",\"data\":\""] {
            for decode in [false, true] {
                var f = Framer(maxMessage: 1 << 20, parsesLines: decode)
                var frames: [Framer.Frame] = f.feed(Array(start.utf8))
                let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 65536)
                var peak = 0
                for _ in 0..<(16 << 4) {  // 16 MiB
                    frames += f.feed(chunk[...])
                    peak = max(peak, f.pendingBytes)
                }
                #expect(peak <= (1 << 20) + 65536, "\(start) decode \(decode): \(peak) bytes held")
                frames += f.feed(Array("\n{\"b\":1}".utf8))
                #expect(texts(frames) == ["<too long>", "{\"b\":1}"], "\(start) decode \(decode)")
            }
        }
    }
}

extension FramerTests {
    /// A 1 MiB message in 4 KiB lines (pretty-printed, or hostile): the validity check at newlines runs a
    /// logarithmic number of times, so framing is O(size); it re-parsed the whole message at each of its 256
    /// newlines before.
    @Test func aMegabyteInFourKiBLinesIsCheckedLogarithmicallyOften() {
        var f = Framer(maxMessage: 4 << 20)
        let line = "\"" + String(repeating: "y", count: 4090) + "\",\n"
        var frames = f.feed(Array("{\"id\":[\n".utf8))
        for _ in 0..<260 { frames += f.feed(Array(line.utf8)) }
        frames += f.feed(Array("1]}\n".utf8))
        #expect(frames.count == 1 && texts(frames).first?.count ?? 0 > 1 << 20)
        #expect(f.validityChecks <= 12, "\(f.validityChecks) checks for 261 lines")
    }

    /// An error in a line the doubling rule did not check is still found when the sender pauses, and the
    /// message still ends at the newline before it.
    @Test func anErrorBetweenChecksStillEndsTheMessageAtItsNewline() {
        var f = Framer()
        let first = "{\"execute\":" + String(repeating: " ", count: 100)  // checked at its newline
        var frames = f.feed(Array((first + "\n\"query-vm\"\n{\"execute\":\"query-version\"\n").utf8))
        #expect(frames.isEmpty, "the last two newlines come before the length doubled: not checked yet")
        if let flushed = f.flushUnfinishedLine() { frames.append(flushed) }
        frames += f.feed([])
        #expect(texts(frames) == [first + "\n\"query-vm\""])
        #expect(f.hasUnfinishedLine)
        if let flushed = f.flushUnfinishedLine() { frames.append(flushed) }
        #expect(texts(frames) == [first + "\n\"query-vm\"", "{\"execute\":\"query-version\""])
    }
}
