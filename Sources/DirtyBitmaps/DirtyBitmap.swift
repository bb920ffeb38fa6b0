import BlockIO

/// A QEMU-model dirty bitmap (DESIGN §6): one bit per granule of a device, set
/// when a write touches the granule while the bitmap is enabled.
///
/// A value type: a copy is a snapshot. The permission rules of DESIGN §6 are
/// kept by `BitmapSet`, which owns the bitmaps of one device; the operations
/// here are the unchecked building blocks.
public struct DirtyBitmap: Sendable, Equatable {
    /// 64 KiB, as in QEMU.
    public static let defaultGranularity: UInt64 = 65_536
    public static let minimumGranularity: UInt64 = 512
    /// QEMU's upper limit (2 GiB).
    public static let maximumGranularity: UInt64 = 1 << 31
    /// The longest name, in bytes of UTF-8 (QEMU's limit for persistent bitmaps).
    public static let maximumNameLength = 1023

    /// The name on its device; empty only for the anonymous successor of a frozen bitmap.
    public internal(set) var name: String
    /// Bytes covered; the last granule may extend past it and is clipped.
    public let deviceSize: UInt64
    /// Bytes per bit: a power of two from 512 to 2 GiB.
    public let granularity: UInt64
    /// ⌈deviceSize / granularity⌉.
    public let granuleCount: Int
    /// Granule `i` is bit `i % 64` of word `i / 64`. Bits at or past
    /// `granuleCount` are always zero, so popcounts and word-wise ORs need no mask.
    public private(set) var words: [UInt64]
    /// Whether `mark` records writes. A disabled bitmap records nothing, by design.
    public var isEnabled: Bool
    /// Set while a job holds the bitmap (it has a successor); see `BitmapSet`.
    public internal(set) var isBusy: Bool = false
    /// Whether the daemon saves it across restarts.
    public var isPersistent: Bool
    /// Its record may have missed writes; only `remove` (or a digest rescan) gets out of it.
    public internal(set) var isInconsistent: Bool = false
    /// Number of times it has been saved; a stale copy of its file shows an older one.
    public internal(set) var generation: UInt64 = 0

    /// A clean bitmap. Errors name the value that is refused.
    public init(name: String, deviceSize: UInt64, granularity: UInt64 = DirtyBitmap.defaultGranularity,
                enabled: Bool = true, persistent: Bool = false) throws(BitmapError) {
        try Self.validate(name: name)
        try Self.validate(granularity: granularity, for: name)
        self.init(unchecked: name, deviceSize: deviceSize, granularity: granularity, enabled: enabled, persistent: persistent)
    }

    /// For successors (anonymous) and for files whose header was already validated.
    init(unchecked name: String, deviceSize: UInt64, granularity: UInt64, enabled: Bool, persistent: Bool) {
        self.name = name
        self.deviceSize = deviceSize
        self.granularity = granularity
        granuleCount = Int(deviceSize / granularity + (deviceSize % granularity == 0 ? 0 : 1))
        words = Array(repeating: 0, count: (granuleCount + 63) / 64)
        isEnabled = enabled
        isPersistent = persistent
    }

    /// Refuses names outside 1–1023 bytes of UTF-8.
    public static func validate(name: String) throws(BitmapError) {
        let n = name.utf8.count
        guard n >= 1, n <= maximumNameLength else {
            let shown = n > 64 ? String(name.prefix(48)) + "…" : name
            throw BitmapError(.invalidName, bitmap: name,
                              "Bitmap name '\(shown)' is \(n) bytes long; names are 1 to \(maximumNameLength) bytes")
        }
    }

    /// Refuses a granularity that is not a power of two from 512 to 2 GiB.
    public static func validate(granularity: UInt64, for name: String) throws(BitmapError) {
        guard granularity >= minimumGranularity, granularity.nonzeroBitCount == 1 else {
            throw BitmapError(.invalidGranularity, bitmap: name,
                              "Cannot add bitmap '\(name)': granularity \(granularity) is not a power of two of at least 512")
        }
        guard granularity <= maximumGranularity else {
            throw BitmapError(.invalidGranularity, bitmap: name,
                              "Cannot add bitmap '\(name)': granularity \(granularity) is larger than the limit of 2 GiB (2147483648)")
        }
    }

    // MARK: recording

    /// Records a write of `length` bytes at `offset`: sets every granule the range
    /// touches, clipped to the device. Does nothing while the bitmap is disabled.
    public mutating func mark(offset: UInt64, length: UInt64) {
        guard isEnabled else { return }
        setDirty(offset: offset, length: length)
    }

    /// Sets every granule the byte range touches whether or not the bitmap is
    /// enabled (merges, reclaim, and a job's own copy bitmap).
    public mutating func setDirty(offset: UInt64, length: UInt64) {
        if let r = touchedGranules(offset: offset, length: length) { setBits(r) }
    }

    /// Clears the granules that lie wholly inside the byte range (the clipped
    /// last granule counts as whole when the range reaches the device's end).
    /// A partly covered granule stays dirty: its other bytes were not copied.
    public mutating func reset(offset: UInt64, length: UInt64) {
        guard length > 0, offset < deviceSize else { return }
        let end = length >= deviceSize - offset ? deviceSize : offset + length
        let first = Int((offset + granularity - 1) / granularity)
        let last = end == deviceSize ? granuleCount : Int(end / granularity)
        if first < last { clearBits(first..<last) }
    }

    /// Clears every bit.
    public mutating func clear() {
        for i in words.indices { words[i] = 0 }
    }

    /// Declares that the record may have missed writes (lost tracer events, a doubtful load).
    public mutating func markInconsistent() { isInconsistent = true }

    /// ORs `source` into this bitmap. Granularities may differ: each dirty granule
    /// of the source sets the granules of this bitmap that its byte range touches.
    /// An inconsistent source makes this bitmap inconsistent. Refused (and nothing
    /// changes) when the two cover different device sizes.
    public mutating func merge(from source: DirtyBitmap) throws(BitmapError) {
        guard source.deviceSize == deviceSize else {
            throw BitmapError(.sizeMismatch, bitmap: name,
                              "Bitmap '\(source.name)' covers \(source.deviceSize) bytes and '\(name)' covers \(deviceSize); they cannot be merged")
        }
        if source.granularity == granularity {
            words.withUnsafeMutableBufferPointer { dst in
                source.words.withUnsafeBufferPointer { src in
                    for i in dst.indices { dst[i] |= src[i] }
                }
            }
        } else {
            for e in source.dirtyExtents { setDirty(offset: e.offset, length: e.length) }
        }
        if source.isInconsistent { isInconsistent = true }
    }

    // MARK: queries

    /// Whether granule `granule` (of `granularity` bytes from `granule × granularity`) is dirty.
    public func isDirty(_ granule: Int) -> Bool {
        precondition(granule >= 0 && granule < granuleCount, "granule \(granule) outside 0..<\(granuleCount)")
        return words[granule >> 6] & (1 << UInt64(granule & 63)) != 0
    }

    /// The number of dirty granules.
    public var dirtyGranuleCount: Int {
        words.withUnsafeBufferPointer { w in w.reduce(0) { $0 + $1.nonzeroBitCount } }
    }

    /// Dirty bytes, as QEMU counts them: dirty granules × granularity, with the
    /// last granule clipped to the device size.
    public var count: UInt64 {
        let bits = dirtyGranuleCount
        guard bits > 0 else { return 0 }
        var bytes = UInt64(bits) * granularity
        if isDirty(granuleCount - 1) {
            let tail = deviceSize - UInt64(granuleCount - 1) * granularity
            bytes -= granularity - tail
        }
        return bytes
    }

    /// Whether no bit is set.
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    /// The dirty byte ranges in ascending order, adjacent granules merged into one
    /// extent, the last clipped to the device. Zero words are skipped whole, so a
    /// sparse bitmap of a large device is walked quickly.
    public var dirtyExtents: DirtyExtents { DirtyExtents(self) }

    /// The granules `[offset, offset + length)` touches, clipped to the device; nil when none.
    func touchedGranules(offset: UInt64, length: UInt64) -> Range<Int>? {
        guard length > 0, offset < deviceSize else { return nil }
        let end = length >= deviceSize - offset ? deviceSize : offset + length
        return Int(offset / granularity)..<Int((end - 1) / granularity + 1)
    }

    // MARK: word-level bit ranges

    private mutating func setBits(_ r: Range<Int>) {
        words.withUnsafeMutableBufferPointer { w in
            Self.forEachWord(in: r) { w[$0] |= $1 }
        }
    }

    private mutating func clearBits(_ r: Range<Int>) {
        words.withUnsafeMutableBufferPointer { w in
            Self.forEachWord(in: r) { w[$0] &= ~$1 }
        }
    }

    /// Calls `body(word index, mask)` for each word that bits `r` touch.
    private static func forEachWord(in r: Range<Int>, _ body: (Int, UInt64) -> Void) {
        var i = r.lowerBound
        while i < r.upperBound {
            let bit = i & 63
            let n = min(64 - bit, r.upperBound - i)
            let mask: UInt64 = n == 64 ? ~0 : ((1 << UInt64(n)) &- 1) << UInt64(bit)
            body(i >> 6, mask)
            i += n
        }
    }

    /// Replaces the words (a loaded file's body); the caller has checked the count and the tail bits.
    mutating func replaceWords(_ new: [UInt64]) {
        precondition(new.count == words.count)
        words = new
    }

    /// Sets every granule (a bitmap whose record cannot be trusted at all).
    mutating func setAll() {
        if granuleCount > 0 { setBits(0..<granuleCount) }
    }
}

/// The dirty extents of a bitmap snapshot, as merged byte ranges in ascending order.
public struct DirtyExtents: Sequence, Sendable {
    let words: [UInt64]
    let granuleCount: Int
    let granularity: UInt64
    let deviceSize: UInt64

    init(_ b: DirtyBitmap) {
        words = b.words
        granuleCount = b.granuleCount
        granularity = b.granularity
        deviceSize = b.deviceSize
    }

    public func makeIterator() -> Iterator { Iterator(extents: self) }

    /// Walks runs of set bits, a word at a time.
    public struct Iterator: IteratorProtocol {
        let extents: DirtyExtents
        /// The first granule not yet looked at.
        var position = 0

        public mutating func next() -> Extent? {
            let w = extents.words
            var wi = position >> 6
            guard wi < w.count else { return nil }
            // The first set bit at or after `position`.
            var word = w[wi] & (~0 << UInt64(position & 63))
            while word == 0 {
                wi += 1
                if wi == w.count { position = extents.granuleCount; return nil }
                word = w[wi]
            }
            let start = wi << 6 + word.trailingZeroBitCount
            // The first clear bit after `start`; bits past granuleCount are zero,
            // so a run always ends by the bitmap's end.
            var holes = ~w[wi] & (~0 << UInt64(start & 63))
            while holes == 0 {
                wi += 1
                if wi == w.count { break }
                holes = ~w[wi]
            }
            let end = wi == w.count ? extents.granuleCount : Swift.min(wi << 6 + holes.trailingZeroBitCount, extents.granuleCount)
            position = end
            let g = extents.granularity
            let from = UInt64(start) * g
            return Extent(offset: from, length: Swift.min(UInt64(end) * g, extents.deviceSize) - from)
        }
    }
}
