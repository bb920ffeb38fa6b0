import Foundation
import Images
import Testing
import TestSupport

/// Damaged images are refused at open time, before any data is read, with
/// an error that names the image and what is wrong with it.
@Suite struct ReaderCorruptionTests {
    /// A 4 MiB qcow2 with 1 MiB of data at 1 MiB; returns its path.
    static func sample(_ dir: TemporaryDirectory, _ name: String = "a.qcow2") throws -> String {
        let image = dir.file(name)
        try Fixture.create(image, size: 4 << 20)
        try Fixture.qemuIO(image, ["write -P 0xab 1M 1M"])
        return image
    }

    /// Host offset of the L2 table of L1 entry 0.
    static func firstL2Table(_ image: String) throws -> UInt64 {
        let h = try Fixture.header(of: image)
        let bytes = try Fixture.bytes(of: image)
        let entry = bytes[Int(h.l1TableOffset)..<Int(h.l1TableOffset) + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return entry & Qcow2Entry.l1OffsetMask
    }

    @Test("a file truncated in the middle of its last data cluster is refused, naming the cluster")
    func truncatedData() throws {
        let dir = try TemporaryDirectory()
        let image = try Self.sample(dir)
        // Find the data cluster that lies last in the file, then cut it in half.
        let reader = try Qcow2Reader(path: image)
        var last: (guest: UInt64, host: UInt64) = (0, 0)
        for cluster in 0..<reader.geometry.guestClusters {
            if case .data(let host) = reader.clusterState(ofGuestCluster: cluster), host > last.host {
                last = (cluster << 16, host)
            }
        }
        #expect(last.host > 0)
        let cut = last.host + 0x8000
        try Shell.check(["truncate", "-s", String(cut), image])
        let error = try #require(Fixture.openFailure(image))
        let index = Int(last.guest >> 16)
        #expect(error == "image \(image) is truncated: data cluster for guest offset 0x\(String(last.guest, radix: 16)) (L1 index 0, L2 index \(index)) at host offset 0x\(String(last.host, radix: 16)) lies beyond the end of the file (0x\(String(cut, radix: 16)) bytes)")
    }

    @Test("a file cut inside its metadata is refused as truncated")
    func truncatedMetadata() throws {
        let dir = try TemporaryDirectory()
        let image = try Self.sample(dir)
        let l2 = try Self.firstL2Table(image)
        try Shell.check(["truncate", "-s", String(l2 + 100), image])
        let error = try #require(Fixture.openFailure(image))
        #expect(error.contains("image \(image) is truncated"))
        #expect(error.contains("beyond the end of the file"))
    }

    @Test("a bad L1 entry is refused, naming the L1 table, the index and the offset",
          arguments: [
            (UInt64(0x0000_0000_0001_2200), "L1 table entry 0 (guest offset 0x0) points to an L2 table at host offset 0x12200, which is not aligned to the cluster size 0x10000"),
            (UInt64(0x8000_0010_0000_0000), "the L2 table of L1 table entry 0 (guest offset 0x0) at host offset 0x1000000000 lies beyond the end of the file"),
            (UInt64(0x0100_0000_0003_0000), "L1 table entry 0 (guest offset 0x0) is 0x100000000030000, with reserved bits set"),
          ])
    func corruptL1(entry: UInt64, reason: String) throws {
        let dir = try TemporaryDirectory()
        let image = try Self.sample(dir)
        try Fixture.patch(image, at: try Fixture.header(of: image).l1TableOffset, Fixture.bigEndian(entry))
        let error = try #require(Fixture.openFailure(image))
        #expect(error.contains(image))
        #expect(error.contains(reason))
    }

    @Test("a bad L2 entry is refused, naming the guest offset and both indexes",
          arguments: [
            (UInt64(0x8000_0000_0005_0002), "L2 entry for guest offset 0x100000 (L1 index 0, L2 index 16) is 0x8000000000050002, with reserved bits set"),
            (UInt64(0x8000_0000_0005_8000), "data cluster for guest offset 0x100000 (L1 index 0, L2 index 16) at host offset 0x58000 is not aligned"),
            (UInt64(0x8000_0000_0000_0000), "COPIED flag without a host offset"),
            (UInt64(0x4000_7000_0000_0000), "compressed cluster for guest offset 0x100000 (L1 index 0, L2 index 16) at host offset 0x700000000000 (up to 0x200 bytes) lies beyond the end of the file"),
          ])
    func corruptL2(entry: UInt64, reason: String) throws {
        let dir = try TemporaryDirectory()
        let image = try Self.sample(dir)
        // Guest offset 1 MiB is L2 index 16 with 64 KiB clusters.
        try Fixture.patch(image, at: try Self.firstL2Table(image) + 16 * 8, Fixture.bigEndian(entry))
        let error = try #require(Fixture.openFailure(image))
        #expect(error.contains(image))
        #expect(error.contains(reason), "\(error)")
    }

    @Test("header damage is refused with the reason",
          arguments: [
            (79, [UInt8(0x01)], "was not closed cleanly"),
            (79, [0x02], "is corrupt: the corrupt bit is set"),
            (79, [0x20], "unknown incompatible features 0x20"),
            (79, [0x04], "external data file"),
            (32, [0, 0, 0, 1], "encrypted"),
            (4, [0, 0, 0, 4], "qcow2 version 4"),
            (20, [0, 0, 0, 22], "cluster_bits is 22"),
            (96, [0, 0, 0, 7], "refcount_order is 7"),
            (36, [0, 0, 0, 0], "the L1 table has 0 entries, the virtual size 0x400000 needs 1"),
            (104, [2], "compression_type is 2 but the compression type feature bit is clear"),
          ])
    func damagedHeader(offset: UInt64, bytes: [UInt8], reason: String) throws {
        let dir = try TemporaryDirectory()
        let image = try Self.sample(dir)
        try Fixture.patch(image, at: offset, bytes)
        let error = try #require(Fixture.openFailure(image))
        #expect(error.contains("image \(image) "))
        #expect(error.contains(reason), "\(error)")
    }

    @Test("bad magic: not a qcow2 image to Qcow2Reader and to openImage of a .qcow2 name, raw otherwise")
    func badMagic() throws {
        let dir = try TemporaryDirectory()
        let image = try Self.sample(dir)
        try Fixture.patch(image, at: 0, [0x51, 0x46, 0x49, 0x00])
        let error = #expect(throws: ImageFormatError.self) { try Qcow2Reader(path: image) }
        #expect("\(error!)" == "\(image) is not a qcow2 image (bad magic)")
        let named = #expect(throws: ImageFormatError.self) { try openImage(path: image) }
        #expect("\(named!)" == "\(image) is not a qcow2 image (bad magic)")
        let renamed = dir.file("a.img")
        try FileManager.default.moveItem(atPath: image, toPath: renamed)
        #expect(try openImage(path: renamed).format == .raw)
        try FileManager.default.moveItem(atPath: renamed, toPath: image)
        let asked = #expect(throws: ImageFormatError.self) { try openImage(path: image, format: .qcow2) }
        #expect("\(asked!)" == "\(image) is not a qcow2 image (bad magic)")
    }

    @Test("a compressed cluster that does not decompress fails the read that needs it")
    func corruptCompressedData() throws {
        let dir = try TemporaryDirectory()
        let source = dir.file("s.raw"), image = dir.file("c.qcow2")
        try Shell.check(["sh", "-c", "yes ringback | head -c 1048576 > \(source)"])
        try Fixture.qemuImg("convert", "-c", "-O", "qcow2", "-o", "compression_type=zstd", source, image)
        let reader = try Qcow2Reader(path: image)
        guard case .compressed(let host, _) = reader.clusterState(ofGuestCluster: 3) else {
            Issue.record("cluster 3 is not compressed"); return
        }
        try Fixture.patch(image, at: host, [UInt8](repeating: 0xEE, count: 64))
        #expect(try Fixture.read(reader, at: 0, count: 0x30000) == Array(Fixture.bytes(of: source).prefix(0x30000)))
        let error = #expect(throws: ImageFormatError.self) { try Fixture.read(reader, at: 0x30000, count: 512) }
        #expect("\(error!)".contains("image \(image) is corrupt: compressed cluster for guest offset 0x30000 at host offset 0x\(String(host, radix: 16))"))
    }

    @Test("a missing backing file is refused, naming the overlay and the backing file")
    func missingBacking() throws {
        let dir = try TemporaryDirectory()
        let base = try Self.sample(dir, "base.qcow2"), top = dir.file("top.qcow2")
        try Fixture.create(top, size: 4 << 20, backing: "base.qcow2")
        try FileManager.default.removeItem(atPath: base)
        let error = try #require(Fixture.openFailure(top))
        #expect(error.contains("image \(top) has an unusable backing file: 'base.qcow2': cannot open \(base) for reading"))
        #expect(error.contains("ENOENT"))
    }

    @Test("a backing chain that loops is refused")
    func loopingChain() throws {
        let dir = try TemporaryDirectory()
        let a = dir.file("a.qcow2"), b = dir.file("b.qcow2")
        try Fixture.create(a, size: 1 << 20)
        try Fixture.create(b, size: 1 << 20, backing: "a.qcow2")
        try Fixture.qemuImg("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", a)
        let error = try #require(Fixture.openFailure(b))
        #expect(error == "image \(a) has an unusable backing file: \(b) is already in the backing chain (the chain loops)")
        // An image that is its own backing file.
        try Fixture.qemuImg("rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", a)
        #expect(Fixture.openFailure(a)?.contains("the chain loops") == true)
    }

    @Test("backing chains may be 64 images deep, not 65")
    func chainDepthLimit() throws {
        let dir = try TemporaryDirectory()
        try Fixture.create(dir.file("0.qcow2"), size: 1 << 20)
        try Fixture.qemuIO(dir.file("0.qcow2"), ["write -P 0x42 0 4k"])
        for i in 1...65 {
            try Shell.check(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "\(i - 1).qcow2", "-F", "qcow2",
                             dir.file("\(i).qcow2"), "1M"])
        }
        let deepest = try #require(try openImage(path: dir.file("64.qcow2")) as? Qcow2Reader)
        #expect(deepest.backingChainDepth == 64)
        #expect(try Fixture.read(deepest, at: 0, count: 4) == [0x42, 0x42, 0x42, 0x42])
        let error = try #require(Fixture.openFailure(dir.file("65.qcow2")))
        #expect(error.contains("the backing chain is deeper than 64 images"))
    }
}
