@testable import Inspector
import Schema
import Testing
import TestSupport

/// The model's fault list against a plain array on random appends, removals and changes, copies included: a copy
/// is a value (what one side changes, the other does not see), whatever chunks the two share.
struct FaultLogTests {
    func record(_ seq: UInt64) -> FaultRecord {
        FaultRecord(seq: seq, vcpu: Int(seq % 3), gpa: seq * 4096, flags: 0, access: .known(.read))
    }

    @Test func behavesAsAnArrayOnRandomOperations() {
        var rng = SplitMix64(state: 42)
        var log = FaultLog(), model: [FaultRecord] = []
        var copies: [(FaultLog, [FaultRecord])] = []
        var seq: UInt64 = 1
        for step in 0..<4000 {
            switch rng.next() % 6 {
            case 0, 1:
                let n = Int(rng.next() % 3000)
                let batch = (0..<n).map { _ in defer { seq += 1 }; return record(seq) }
                log.append(contentsOf: batch); model += batch
            case 2:
                log.append(record(seq)); model.append(record(seq)); seq += 1
            case 3:
                let k = model.isEmpty ? 0 : Int(rng.next() % UInt64(model.count + 1))
                log.removeFirst(k); model.removeFirst(k)
            case 4 where !model.isEmpty:
                let i = Int(rng.next() % UInt64(model.count))
                log[i].tracedNs = UInt64(step); model[i].tracedNs = UInt64(step)
            default:
                copies.append((log, model))
                if copies.count > 8 { copies.removeFirst() }
            }
            #expect(log.count == model.count)
            if step % 97 == 0 { #expect(Array(log) == model, "step \(step)") }
        }
        #expect(Array(log) == model)
        #expect(log.last == model.last && Array(log.suffix(5)) == Array(model.suffix(5)))
        for (c, m) in copies { #expect(Array(c) == m, "a copy changed with its original") }
    }
}
