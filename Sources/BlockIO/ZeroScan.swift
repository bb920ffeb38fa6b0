/// Detection of all-zero clusters, the test that decides which clusters are
/// never written (DESIGN §4).
public enum ZeroScan {
    /// True when all `count` bytes at `pointer` are zero. Reads 8 bytes at a
    /// time, stopping at the first non-zero word: random data costs one load.
    public static func isZero(_ pointer: UnsafeRawPointer, count: Int) -> Bool {
        var p = pointer
        var n = count
        // Leading bytes until 8-byte alignment.
        while n > 0 && (UInt(bitPattern: p) & 7) != 0 {
            if p.load(as: UInt8.self) != 0 { return false }
            p += 1; n -= 1
        }
        // Four words per step keep the loop short without a memcmp call.
        while n >= 32 {
            let a = p.load(as: UInt64.self), b = p.load(fromByteOffset: 8, as: UInt64.self)
            let c = p.load(fromByteOffset: 16, as: UInt64.self), d = p.load(fromByteOffset: 24, as: UInt64.self)
            if (a | b | c | d) != 0 { return false }
            p += 32; n -= 32
        }
        while n >= 8 {
            if p.load(as: UInt64.self) != 0 { return false }
            p += 8; n -= 8
        }
        while n > 0 {
            if p.load(as: UInt8.self) != 0 { return false }
            p += 1; n -= 1
        }
        return true
    }

    /// True when the buffer is all zero.
    public static func isZero(_ buffer: UnsafeRawBufferPointer) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        return isZero(base, count: buffer.count)
    }
}
