import BlockIO
import PropertyBased
@testable import DirtyBitmaps

/// A write on the device: `length` bytes at `offset`.
struct Write: Equatable, CustomStringConvertible {
    var offset: UInt64
    var length: UInt64
    var description: String { "\(length)@\(offset)" }
}

/// The naive model of a bitmap: one Bool per granule, dirty when any write
/// overlaps the granule's bytes inside the device. No word arithmetic, no runs.
struct NaiveBitmap: Equatable {
    let granularity: UInt64
    let deviceSize: UInt64
    var dirty: [Bool]

    init(granularity: UInt64, deviceSize: UInt64) {
        self.granularity = granularity
        self.deviceSize = deviceSize
        var n = 0
        while UInt64(n) * granularity < deviceSize { n += 1 }
        dirty = Array(repeating: false, count: n)
    }

    func range(of g: Int) -> (UInt64, UInt64) {
        (UInt64(g) * granularity, min(UInt64(g + 1) * granularity, deviceSize))
    }

    /// Marks every granule that shares at least one byte with `[offset, offset + length)`.
    mutating func mark(offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        // Only a window around the write is looked at (for speed); the overlap test decides.
        let from = max(0, Int(offset / granularity) - 1)
        let to = min(dirty.count, Int((offset + length) / granularity) + 2)
        guard from < to else { return }
        for g in from..<to {
            let (start, end) = range(of: g)
            if length > 0 && offset < end && offset + length > start { dirty[g] = true }
        }
    }

    mutating func mark(_ writes: [Write]) { for w in writes { mark(offset: w.offset, length: w.length) } }

    /// Marks every granule that overlaps a dirty granule of `other` (a merge).
    mutating func merge(_ other: NaiveBitmap) {
        for (g, d) in other.dirty.enumerated() where d {
            let (s, e) = other.range(of: g)
            mark(offset: s, length: e - s)
        }
    }

    /// Dirty bytes, summed granule by granule with each granule clipped to the device.
    var count: UInt64 {
        dirty.indices.filter { dirty[$0] }.reduce(0) { sum, g in let (s, e) = range(of: g); return sum + e - s }
    }

    /// Runs of dirty granules, found one granule at a time.
    var extents: [Extent] {
        var out: [Extent] = []
        for g in dirty.indices where dirty[g] {
            let (s, e) = range(of: g)
            if let last = out.last, last.end == s {
                out[out.count - 1].length += e - s
            } else {
                out.append(Extent(offset: s, length: e - s))
            }
        }
        return out
    }

    /// Whether the real bitmap has exactly the model's bits.
    func matches(_ b: DirtyBitmap) -> Bool {
        b.granuleCount == dirty.count && dirty.indices.allSatisfy { b.isDirty($0) == dirty[$0] }
    }
}

/// Random device geometry and writes: a granularity from 512 B to 2 MiB, a device
/// of 1–300 granules (so runs cross word boundaries) that may end mid-granule,
/// and writes of 0 bytes to several granules, some reaching past the device.
enum Geometry {
    static let granularityBits = Gen.int(in: 9...21)
    static let granules = Gen.int(in: 1...300)
    static let tail = Gen.int(in: 0...3)
    static let writes = Gen.int(in: 0...1_000_000).array(of: 0...40)

    static func deviceSize(granularityBits: Int, granules: Int, tail: Int) -> UInt64 {
        let g = UInt64(1) << granularityBits
        // tail 0: a whole number of granules; otherwise the last granule is cut short.
        return UInt64(granules) * g - (tail == 0 ? 0 : g * UInt64(tail) / 4 + 1)
    }

    static func writes(from raw: [Int], deviceSize: UInt64, granularity: UInt64) -> [Write] {
        stride(from: 0, to: raw.count - 1, by: 2).map { i in
            let a = UInt64(raw[i]), b = UInt64(raw[i + 1])
            let offset = a * (deviceSize + granularity / 2) / 1_000_000
            let length = b % 7 == 0 ? b % 511 + 1 : b % 11 == 0 ? 0 : b * granularity / 250_000
            return Write(offset: offset, length: length)
        }
    }
}

extension DirtyBitmap {
    mutating func mark(_ writes: [Write]) { for w in writes { mark(offset: w.offset, length: w.length) } }
}

extension BitmapSet {
    mutating func mark(_ writes: [Write]) { for w in writes { mark(offset: w.offset, length: w.length) } }
}
