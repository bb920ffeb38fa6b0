import BlockIO
import Foundation
import Testing
import TestSupport
@testable import Images

/// Folding an overlay into its backing image, judged by QEMU: bases and
/// overlays are made by qemu-img and qemu-io (data, partial-cluster, zero and
/// compressed writes over data, compressed and unallocated base clusters), and
/// after the merge `qemu-img check` must find the base clean and
/// `qemu-img compare` must find it identical to what the overlay read before.
@Suite struct Qcow2MergeTests {
    /// qemu-io writes over an 8 MiB (+ a partial cluster) disk, repeatable by seed.
    static func overlayWrites(size: UInt64, clusterSize: Int, seed: UInt64) -> [String] {
        var rng = SplitMix64(seed: seed)
        let clusters = Int(size / UInt64(clusterSize))
        var commands: [String] = []
        // QEMU writes a compressed cluster only where the overlay has none yet.
        var allocated = Set<Int>()
        for _ in 0..<24 {
            let cluster = Int(rng.next() % UInt64(clusters - 4))
            let count = Int(rng.next() % 3) + 1
            let pattern = String(format: "0x%02x", Int(rng.next() % 255) + 1)
            let offset = cluster * clusterSize, length = count * clusterSize
            let kind = rng.next() % 5
            defer { allocated.formUnion(cluster..<(cluster + count)) }
            switch kind {
            case 0: commands.append("write -z \(offset) \(length)")
            case 1 where !allocated.contains(cluster): commands.append("write -c -P \(pattern) \(offset) \(clusterSize)")
            case 2:
                // Part of a cluster: the rest is copied up from the base.
                let within = Int(rng.next() % UInt64(clusterSize / 512)) * 512
                commands.append("write -P \(pattern) \(offset + within) 512")
            default: commands.append("write -P \(pattern) \(offset) \(length)")
            }
        }
        // The partial last cluster, and a write of zeros as data.
        commands.append("write -P 0x5e \(size - 4096) 4096")
        commands.append("write -P 0 \(2 * clusterSize) \(clusterSize)")
        return commands
    }

    /// A base (converted from mixed content, compressed as asked) and an
    /// overlay on it with `overlayWrites`; returns the raw bytes the overlay reads.
    static func makeChain(_ dir: TemporaryDirectory, compression: String, clusterSize: Int, seed: UInt64)
        throws -> (base: String, top: String, expected: String) {
        let size: UInt64 = (8 << 20) + 12_288
        let raw = dir.file("base.raw"), base = dir.file("base.qcow2"), top = dir.file("top.qcow2")
        try Fixture.mixedRaw(raw, size: Int(size), seed: seed)
        var args = ["convert", "-O", "qcow2"]
        if compression != "none" { args += ["-c"] }
        args += ["-o", "cluster_size=\(clusterSize)" + (compression == "zstd" ? ",compression_type=zstd" : ""), raw, base]
        try Shell.check(["qemu-img"] + args)
        try Fixture.create(top, size: size, clusterSize: clusterSize, backing: "base.qcow2")
        try Fixture.qemuIO(top, overlayWrites(size: size, clusterSize: clusterSize, seed: seed ^ 0x5bd1e995))
        let expected = dir.file("expected.raw")
        try Fixture.qemuImg("convert", "-O", "raw", top, expected)
        return (base, top, expected)
    }

    @Test("the merged base reads as the overlay did, and passes qemu-img check",
          arguments: ["none", "zlib", "zstd"], [4096, 65536])
    func mergeMatchesQEMU(compression: String, clusterSize: Int) throws {
        for seed: UInt64 in [1, 2] {
            let dir = try TemporaryDirectory(prefix: "ringback-merge")
            let (base, top, expected) = try Self.makeChain(dir, compression: compression, clusterSize: clusterSize, seed: seed)
            let summary = try Qcow2Merge(top: top, into: base).run()
            try QemuImg.check(base)
            #expect(try QemuImg.identical(base, expected, formatA: "qcow2", formatB: "raw"),
                    "seed \(seed): the merged base differs from the overlay")
            #expect(try QemuImg.identical(top, expected, formatA: "qcow2", formatB: "raw"),
                    "seed \(seed): the view through the overlay changed")
            #expect(summary.clusters > 0 && summary.zeroClusters > 0 && summary.dataClusters > 0)
            #expect(summary.freedClusters > 0, "the old tables, at least, are no longer used")
            // A zstd base keeps what it takes in compressed; the others store it plain.
            #expect((summary.compressedClusters > 0) == (compression == "zstd"))
            if compression == "none" { #expect(summary.inPlaceClusters > 0) }

            // Merging again (as after a crash) writes the same bytes: same content, same map, still clean.
            let mapping = try Fixture.qemuMapping(base)
            _ = try Qcow2Merge(top: top, into: base).run()
            try QemuImg.check(base)
            #expect(try QemuImg.identical(base, expected, formatA: "qcow2", formatB: "raw"))
            #expect(try Fixture.qemuMapping(base) == mapping)
        }
    }

    @Test func repeatedMergesKeepTheFileFromGrowing() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-merge")
        let (base, top, expected) = try Self.makeChain(dir, compression: "none", clusterSize: 65536, seed: 7)
        var sizes: [UInt64] = []
        for _ in 0..<4 {
            _ = try Qcow2Merge(top: top, into: base).run()
            sizes.append(try FileManager.default.attributesOfItem(atPath: base)[.size] as! UInt64)
        }
        #expect(try QemuImg.identical(base, expected, formatA: "qcow2", formatB: "raw"))
        // Freed metadata clusters are reused by the next merge.
        #expect(sizes.last! <= sizes.first! + 4 * 65536, "file sizes \(sizes)")
    }

    @Test func anEmptyOverlayChangesNothing() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-merge")
        let raw = dir.file("base.raw"), base = dir.file("base.qcow2"), top = dir.file("top.qcow2")
        try Fixture.mixedRaw(raw, size: 1 << 20, seed: 3)
        try Fixture.qemuImg("convert", "-O", "qcow2", raw, base)
        try Fixture.create(top, size: 1 << 20, backing: "base.qcow2")
        let before = try Fixture.bytes(of: base)
        let summary = try Qcow2Merge(top: top, into: base).run()
        #expect(summary.clusters == 0 && summary.bytesWritten == 0)
        #expect(try Fixture.bytes(of: base) == before)
    }

    @Test func whatCannotBeMergedIsRefusedBeforeAnythingIsWritten() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-merge")
        let (base, top, _) = try Self.makeChain(dir, compression: "none", clusterSize: 65536, seed: 11)
        let other = dir.file("other.qcow2")
        try Fixture.create(other, size: 1 << 20)
        func failure(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        // Not the overlay's backing file.
        #expect(failure { _ = try Qcow2Merge(top: top, into: other) }.contains("is \(base), not \(other)"))
        // A base that has a backing file itself.
        let middle = dir.file("middle.qcow2"), upper = dir.file("upper.qcow2")
        try Fixture.create(middle, size: (8 << 20) + 12_288, backing: "base.qcow2")
        try Fixture.create(upper, size: (8 << 20) + 12_288, backing: "middle.qcow2")
        #expect(failure { _ = try Qcow2Merge(top: upper, into: middle) }.contains("only the first image of a chain"))
        // Another cluster size.
        let small = dir.file("small.qcow2")
        try Fixture.create(small, size: (8 << 20) + 12_288, clusterSize: 4096, backing: "base.qcow2")
        #expect(failure { _ = try Qcow2Merge(top: small, into: base) }.contains("cluster size"))
        // Refcounts that disagree with the tables (a leak made by hand).
        let before = try Fixture.bytes(of: base)
        let header = try Fixture.header(of: base)
        let table = try Fixture.bytes(of: base)[Int(header.refcountTableOffset)..<Int(header.refcountTableOffset) + 8]
        let block = table.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        try Fixture.patch(base, at: block + 2 * 3000, [0, 1])
        let corrupt = try Fixture.bytes(of: base)
        #expect(failure { _ = try Qcow2Merge(top: top, into: base) }.contains("host cluster 3000 has refcount 1 but 0 references"))
        #expect(try Fixture.bytes(of: base) == corrupt, "nothing was written")
        #expect(corrupt != before)
    }

    @Test("a backing file name is replaced atomically, short or long", arguments: [false, true])
    func backingNameRewrite(long: Bool) throws {
        let dir = try TemporaryDirectory(prefix: "ringback-merge")
        let (base, top, expected) = try Self.makeChain(dir, compression: "none", clusterSize: 65536, seed: 5)
        // A long relative name puts the new name past the first sector.
        var folder = dir.path, relative = ""
        if long {
            for i in 0..<3 {
                let part = String(repeating: Character(String(i)), count: 200)
                folder += "/" + part
                relative += part + "/"
            }
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        let moved = folder + "/0001-full-20250101T000000Z.qcow2"
        #expect(link(base, moved) == 0)
        let name = relative + "0001-full-20250101T000000Z.qcow2"
        try Qcow2BackingName.rewrite(image: top, to: name)
        #expect(try Qcow2BackingName.read(image: top) == name)
        let info = try Fixture.qemuImg("info", "--output=json", top)
        #expect(info.contains("\"backing-filename\": \"\(name)\""), "\(info)")
        #expect(info.contains("\"backing-filename-format\": \"qcow2\""))
        unlink(base)
        try QemuImg.check(top)
        #expect(try QemuImg.identical(top, expected, formatA: "qcow2", formatB: "raw"))
        let tooLong = String(repeating: "x", count: 1024)
        #expect(throws: MergeError.self) { try Qcow2BackingName.rewrite(image: top, to: tooLong) }
        #expect(try Qcow2BackingName.read(image: top) == name)
    }

    /// The allocator never hands out a cluster the committed state uses, nor
    /// one twice, and fills holes before growing the file.
    @Test func allocatorFillsHolesFirst() {
        var a = Qcow2ClusterAllocator(committed: [1, 1, 0, 1, 0, 0, 1, 0], fileClusters: 8)
        #expect(a.allocate() == 2)
        #expect(a.allocate(2) == 4)
        #expect(a.allocate(2) == 8, "no free run of two is left below the end")
        #expect(a.allocate() == 7)
        #expect(a.allocate() == 10)
        #expect(a.end == 11)
    }
}
