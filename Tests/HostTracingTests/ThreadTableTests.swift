@testable import HostTracing
import Testing

/// The pairings' per-thread table against Dictionary as its model: random inserts, replacements, removals (which
/// move later entries of a probe run back) and emptyings, with tids crowded into a few slots and spread over all of
/// Int32 (0 and negative ones included: a raw recording may name any).
struct ThreadTableTests {
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test(arguments: [(Int32(0), Int32(40)), (Int32(1000), Int32(1300)), (Int32.min, Int32.max)])
    func itAgreesWithADictionary(range: (Int32, Int32)) {
        var g = Generator(state: UInt64(bitPattern: Int64(range.0)) ^ 0x5eed)
        var table = ThreadTable<Int>()
        var model: [Int32: Int] = [:]
        for step in 0..<40_000 {
            let tid = Int32.random(in: range.0...range.1, using: &g)
            switch Int.random(in: 0..<100, using: &g) {
            case 0..<50:
                table[tid] = step
                model[tid] = step
            case 50..<90:
                #expect(table.removeValue(forKey: tid) == model.removeValue(forKey: tid))
            case 90..<99:
                #expect(table[tid] == model[tid])
            default:
                if Int.random(in: 0..<20, using: &g) == 0 {
                    table.removeAll()
                    model.removeAll()
                }
            }
            if step % 997 == 0 || table.count != model.count {
                #expect(table.count == model.count)
                // Every key the model has is found (a removal that left a hole in a probe run would lose some).
                #expect(model.allSatisfy { table[$0.key] == $0.value }, "step \(step)")
                #expect(table.allValues.sorted() == model.values.sorted())
                if table.count != model.count { return }
            }
        }
        var other = ThreadTable<Int>()
        for (k, v) in model.sorted(by: { $0.key > $1.key }) { other[k] = v }
        #expect(other == table, "equal contents inserted in another order compare equal")
        if let k = model.keys.first {
            other[k] = (model[k] ?? 0) + 1
            #expect(other != table)
        }
    }
}
