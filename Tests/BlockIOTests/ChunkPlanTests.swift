import PropertyBased
import Testing
@testable import BlockIO

@Suite struct ChunkPlanTests {
    @Test func wholeDeviceWithUnalignedTail() {
        let size: UInt64 = 64 << 20 + 4096 + 512
        let plan = ChunkPlan(deviceSize: size, clusterSize: 64 << 10, chunkSize: 1 << 20)
        #expect(plan.chunks.count == 65)
        #expect(plan.totalBytes == size)
        #expect(plan.chunks.last == Chunk(index: 64, offset: 64 << 20, length: 4096 + 512))
        #expect(plan.chunks.dropLast().allSatisfy { $0.length == 1 << 20 })
    }

    @Test func extentsAreWidenedToClustersAndMerged() {
        let plan = ChunkPlan(extents: [Extent(offset: 70_000, length: 10), Extent(offset: 65_536 * 2 + 5, length: 1),
                                       Extent(offset: 1 << 30, length: 100)],
                             deviceSize: 1 << 20, clusterSize: 65_536, chunkSize: 1 << 20)
        // Clusters 1 and 2 merge into one chunk; the extent beyond the device is dropped.
        #expect(plan.chunks == [Chunk(index: 0, offset: 65_536, length: 2 * 65_536)])
    }

    @Test func emptyDeviceHasNoChunks() {
        #expect(ChunkPlan(deviceSize: 0, clusterSize: 4096, chunkSize: 4096).chunks.isEmpty)
    }

    /// For any set of extents: chunks start on cluster boundaries, never exceed
    /// the chunk size, never overlap, stay inside the device, and cover every
    /// requested byte — and nothing outside the requested clusters.
    @Test func planCoversExactlyTheRequestedClusters() async {
        let extentGen = Gen.int(in: 0...5000).array(of: 0...12)
        await propertyCheck(count: 300, input: Gen.int(in: 9...16), Gen.int(in: 0...4), Gen.int(in: 1...200_000), extentGen) {
            clusterBits, chunkShift, sizeKiB, raw in
            let cluster = 1 << clusterBits
            let chunk = cluster << chunkShift
            let size = UInt64(sizeKiB) * 1024 + UInt64(sizeKiB % 7) * 512
            let extents = stride(from: 0, to: raw.count - 1, by: 2).map {
                Extent(offset: UInt64(raw[$0]) * UInt64(size) / 5000, length: UInt64(raw[$0 + 1]) * 97)
            }
            let plan = ChunkPlan(extents: extents, deviceSize: size, clusterSize: cluster, chunkSize: chunk)
            var last: UInt64 = 0
            for (i, c) in plan.chunks.enumerated() {
                #expect(c.index == i)
                #expect(c.offset % UInt64(cluster) == 0)
                #expect(c.length > 0 && c.length <= chunk)
                #expect(c.offset >= last)
                #expect(c.end <= size)
                #expect(c.end == size || c.length % cluster == 0)
                last = c.end
            }
            let covered = { (o: UInt64) in plan.chunks.contains { $0.offset <= o && o < $0.end } }
            for e in extents where e.length > 0 && e.offset < size {
                #expect(covered(e.offset))
                #expect(covered(min(e.end, size) - 1))
            }
            // Every chunk's first cluster touches some requested extent.
            for c in plan.chunks {
                let clusterEnd = min(c.offset + UInt64(cluster), size)
                #expect(extents.contains { $0.length > 0 && $0.offset < clusterEnd && $0.end > c.offset }
                        || plan.chunks.contains { $0.end == c.offset })
            }
        }
    }
}

@Suite struct ZeroScanTests {
    @Test(arguments: [0, 1, 7, 8, 31, 32, 33, 4096, 65_536])
    func zeroBuffersAreZero(count: Int) {
        let buf = [UInt8](repeating: 0, count: count + 3)
        buf.withUnsafeBytes { p in
            for shift in 0..<3 { #expect(ZeroScan.isZero(p.baseAddress! + shift, count: count)) }
        }
    }

    /// One non-zero byte anywhere, at any alignment, is found.
    @Test func anyNonZeroByteIsFound() async {
        await propertyCheck(count: 500, input: Gen.int(in: 1...70_000), Gen.int(in: 0...69_999), Gen.int(in: 0...7),
                            Gen.int(in: 1...255)) { count, rawPos, shift, value in
            let pos = rawPos % count
            var buf = [UInt8](repeating: 0, count: count + 8)
            buf[shift + pos] = UInt8(value)
            buf.withUnsafeBytes { p in
                #expect(!ZeroScan.isZero(p.baseAddress! + shift, count: count))
                // Bytes outside the range do not count.
                if pos > 0 { #expect(ZeroScan.isZero(p.baseAddress! + shift, count: pos)) }
            }
        }
    }
}

@Suite struct OptionsAndPacingTests {
    @Test(arguments: [0, 256, 511, 1000, 3 << 10, 4 << 20])
    func badClusterSizesAreRefusedByValue(size: Int) {
        var o = CopyOptions()
        o.clusterSize = size
        o.chunkSize = max(size, 1) * 16
        #expect(throws: CopyOptionsError.self) { try o.validate() }
        do { try o.validate() } catch { #expect("\(error)".contains("cluster size \(size)")) }
    }

    @Test func chunkMustBeAMultipleOfTheCluster() {
        var o = CopyOptions()
        o.chunkSize = (1 << 20) + 512
        #expect(throws: CopyOptionsError.invalid("chunk size 1049088 must be a multiple of the cluster size 65536")) {
            try o.validate()
        }
    }

    @Test func defaultsAreValid() throws {
        let o = CopyOptions()
        try o.validate()
        #expect(o.clusterSize == 65_536 && o.chunkSize == 1 << 20 && o.queueDepth == 32)
    }

    /// The n-th byte is not issued before n / speed seconds.
    @Test func rateLimiterPacesBytes() {
        var r = RateLimiter()
        #expect(r.delay(for: 1 << 20, speed: 1 << 20, now: 100) == 0)
        r.issue(1 << 20)
        #expect(abs(r.delay(for: 1 << 20, speed: 1 << 20, now: 100.25) - 0.75) < 1e-9)
        #expect(r.delay(for: 1 << 20, speed: 1 << 20, now: 101.5) == 0)
        // No limit: never waits.
        #expect(r.delay(for: 1 << 30, speed: 0, now: 0) == 0)
    }
}
