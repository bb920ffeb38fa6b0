import BlockIO
import PropertyBased
import Testing
@testable import DirtyBitmaps

@Suite struct DirtyBitmapTests {
    // MARK: validation

    @Test(arguments: [UInt64(512), 1024, 4096, 32_768, 65_536, 131_072, 2 << 20, 1 << 31])
    func powersOfTwoFrom512AreAccepted(granularity: UInt64) throws {
        let b = try DirtyBitmap(name: "b", deviceSize: 1 << 30, granularity: granularity)
        #expect(b.granularity == granularity)
    }

    @Test(arguments: [UInt64(0), 1, 256, 511, 64_000, 65_535, 65_537, 3 << 20, 1 << 32])
    func otherGranularitiesAreRefusedNamingTheValue(granularity: UInt64) {
        let e = #expect(throws: BitmapError.self) {
            try DirtyBitmap(name: "nightly", deviceSize: 1 << 30, granularity: granularity)
        }
        #expect(e?.code == .invalidGranularity)
        #expect(e?.description.contains("granularity \(granularity) ") == true)
        #expect(e?.description.contains("'nightly'") == true)
    }

    @Test func granularity64000HasTheDocumentedText() {
        let e = #expect(throws: BitmapError.self) { try DirtyBitmap(name: "x", deviceSize: 1 << 20, granularity: 64_000) }
        #expect(e?.message == "Cannot add bitmap 'x': granularity 64000 is not a power of two of at least 512")
    }

    @Test func defaultGranularityIs64KiB() throws {
        #expect(try DirtyBitmap(name: "b", deviceSize: 1 << 20).granularity == 65_536)
    }

    @Test(arguments: [(String(repeating: "a", count: 1), true), (String(repeating: "a", count: 1023), true),
                      (String(repeating: "a", count: 1024), false), ("", false),
                      (String(repeating: "é", count: 511), true), (String(repeating: "é", count: 512), false)])
    func namesAre1To1023BytesOfUTF8(name: String, valid: Bool) {
        let result = Result { try DirtyBitmap(name: name, deviceSize: 1 << 20) }
        switch result {
        case .success: #expect(valid)
        case .failure(let e):
            #expect(!valid)
            let e = e as! BitmapError
            #expect(e.code == .invalidName)
            #expect(e.message.contains("\(name.utf8.count) bytes"))
            #expect(e.message.contains("'\(name.prefix(10))"))
        }
    }

    // MARK: count

    /// QEMU's incremental-backup write set A on a 64 MiB device: 0xab at 0 (512 B),
    /// 0xfe at 16 MiB (256 KiB), 0x64 at 32736 KiB (64 KiB, straddling two 64 KiB
    /// granules). At 64 KiB: 64 + 256 + 128 KiB = 458752 bytes.
    @Test(arguments: [(UInt64(65_536), UInt64(458_752)), (32_768, 360_448), (131_072, 655_360)])
    func qemuWriteSetCount(granularity: UInt64, expected: UInt64) throws {
        var b = try DirtyBitmap(name: "bitmap0", deviceSize: 64 << 20, granularity: granularity)
        b.mark(offset: 0, length: 512)
        b.mark(offset: 16 << 20, length: 256 << 10)
        b.mark(offset: 32_736 << 10, length: 64 << 10)
        #expect(b.count == expected)
    }

    @Test func lastGranuleIsClippedToTheDevice() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 100_000, granularity: 65_536)
        #expect(b.granuleCount == 2)
        b.mark(offset: 99_999, length: 10)  // reaches past the end
        #expect(b.count == 100_000 - 65_536)
        b.mark(offset: 0, length: UInt64.max)  // would overflow offset + length
        #expect(b.count == 100_000)
        #expect(Array(b.dirtyExtents) == [Extent(offset: 0, length: 100_000)])
    }

    @Test func writesOutsideTheDeviceOrEmptyMarkNothing() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 1 << 20, granularity: 4096)
        b.mark(offset: 1 << 20, length: 4096)
        b.mark(offset: UInt64.max - 10, length: 100)
        b.mark(offset: 8192, length: 0)
        #expect(b.isEmpty && b.count == 0)
        #expect(Array(b.dirtyExtents).isEmpty)
    }

    @Test func aDisabledBitmapRecordsNothing() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 1 << 20, enabled: false)
        b.mark(offset: 0, length: 1 << 20)
        #expect(b.isEmpty)
        b.setDirty(offset: 0, length: 1)  // merges and jobs still set bits
        #expect(b.count == 65_536)
    }

    @Test func resetClearsOnlyWholeGranules() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 10 * 4096 + 100, granularity: 4096)
        b.setDirty(offset: 0, length: b.deviceSize)
        b.reset(offset: 100, length: 3 * 4096)  // whole granules 1 and 2 only
        #expect((0..<11).filter { !b.isDirty($0) } == [1, 2])
        b.reset(offset: 10 * 4096, length: 1 << 30)  // the clipped tail counts as whole
        #expect(!b.isDirty(10))
        #expect(b.count == 8 * 4096)
    }

    @Test func clearEmptiesTheBitmap() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 1 << 30, granularity: 512)
        b.mark(offset: 12_345, length: 1 << 25)
        #expect(!b.isEmpty)
        b.clear()
        #expect(b.isEmpty && b.count == 0 && b.dirtyGranuleCount == 0)
    }

    // MARK: extents

    @Test func runsCrossAndEndOnWordBoundaries() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 256 * 512, granularity: 512)  // exactly 4 words
        b.mark(offset: 60 * 512, length: 10 * 512)      // granules 60..<70 (crosses word 0→1)
        b.mark(offset: 100 * 512, length: 28 * 512)     // 100..<128 (ends at a word end)
        b.mark(offset: 192 * 512, length: 64 * 512)     // the whole last word
        #expect(Array(b.dirtyExtents) == [Extent(offset: 60 * 512, length: 10 * 512),
                                          Extent(offset: 100 * 512, length: 28 * 512),
                                          Extent(offset: 192 * 512, length: 64 * 512)])
    }

    /// 1 TiB at 64 KiB is 2 MiB of bits; a few scattered writes come back as
    /// exactly their granule-widened extents.
    @Test func sparseTerabyteDevice() throws {
        var b = try DirtyBitmap(name: "b", deviceSize: 1 << 40)
        #expect(b.words.count == 262_144)
        b.mark(offset: 5, length: 1)
        b.mark(offset: 700 << 30, length: 1 << 20)
        b.mark(offset: (1 << 40) - 1, length: 1)
        #expect(Array(b.dirtyExtents) == [Extent(offset: 0, length: 65_536),
                                          Extent(offset: 700 << 30, length: 1 << 20),
                                          Extent(offset: (1 << 40) - 65_536, length: 65_536)])
        #expect(b.count == 65_536 * 18)
    }

    /// Count, isDirty and the extents equal a per-granule model for any
    /// granularity from 512 B to 2 MiB, device size and writes.
    @Test func bitsCountAndExtentsMatchTheNaiveModel() async {
        await propertyCheck(count: 300, input: Geometry.granularityBits, Geometry.granules, Geometry.tail, Geometry.writes) {
            bits, granules, tail, raw in
            let g = UInt64(1) << bits
            let size = Geometry.deviceSize(granularityBits: bits, granules: granules, tail: tail)
            let writes = Geometry.writes(from: raw, deviceSize: size, granularity: g)
            var b = try DirtyBitmap(name: "b", deviceSize: size, granularity: g)
            var model = NaiveBitmap(granularity: g, deviceSize: size)
            b.mark(writes)
            model.mark(writes)
            #expect(model.matches(b))
            #expect(b.count == model.count)
            #expect(b.dirtyGranuleCount == model.dirty.filter { $0 }.count)
            #expect(Array(b.dirtyExtents) == model.extents)
        }
    }

    // MARK: merge

    /// Merge is an OR across granularities: the target afterwards holds its own
    /// granules, every granule overlapping a dirty granule of a source, and nothing else.
    @Test func mergeIsAnOrAcrossGranularities() async {
        let granularity = Gen.int(in: 9...21)
        await propertyCheck(count: 200, input: granularity.array(of: 2...4), Gen.int(in: 1...40), Geometry.tail,
                            Geometry.writes.array(of: 4...4)) { bits, megabytes, tail, raws in
            let size = UInt64(megabytes) << 20 - UInt64(tail) * 1000
            var bitmaps: [DirtyBitmap] = []
            var models: [NaiveBitmap] = []
            for (i, bit) in bits.enumerated() {
                let g = UInt64(1) << bit
                var b = try DirtyBitmap(name: "b\(i)", deviceSize: size, granularity: g)
                var m = NaiveBitmap(granularity: g, deviceSize: size)
                let writes = Geometry.writes(from: raws[i], deviceSize: size, granularity: 65_536)
                b.mark(writes)
                m.mark(writes)
                bitmaps.append(b)
                models.append(m)
            }
            var target = bitmaps[0], model = models[0]
            for (s, m) in zip(bitmaps.dropFirst(), models.dropFirst()) {
                try target.merge(from: s)
                model.merge(m)
            }
            #expect(model.matches(target))
            // ⊇ each source: every dirty byte of a source is dirty in the target.
            for s in bitmaps.dropFirst() {
                for e in s.dirtyExtents {
                    #expect(target.dirtyExtents.contains { $0.offset <= e.offset && e.end <= $0.end })
                }
            }
        }
    }

    @Test func mergeOfDifferentSizesIsRefusedAndChangesNothing() throws {
        var a = try DirtyBitmap(name: "a", deviceSize: 1 << 20)
        var b = try DirtyBitmap(name: "b", deviceSize: 2 << 20)
        a.mark(offset: 0, length: 1)
        b.mark(offset: 1 << 20, length: 1)
        b.markInconsistent()
        let before = a
        let e = #expect(throws: BitmapError.self) { try a.merge(from: b) }
        #expect(e?.code == .sizeMismatch)
        #expect(a == before)
    }

    @Test func mergingAnInconsistentSourceSpreadsTheDoubt() throws {
        var a = try DirtyBitmap(name: "a", deviceSize: 1 << 20)
        var b = try DirtyBitmap(name: "b", deviceSize: 1 << 20, granularity: 512)
        b.markInconsistent()
        try a.merge(from: b)
        #expect(a.isInconsistent)
    }
}
