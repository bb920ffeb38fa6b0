import Foundation
import Images
import PropertyBased
import Testing
import TestSupport

/// Readers compared byte for byte with `qemu-img convert -O raw`, and their
/// mappings with `qemu-img map`.
@Suite struct ReaderTests {
    /// qemu-io writes that, over an image of random data and holes, produce
    /// every kind of L2 entry: data, zero flag over nothing and over data,
    /// partial clusters.
    static let patternWrites = [
        "write -P 0xab 64k 128k",
        "write -z 1M 64k",
        "write -P 0x11 3000 100",
        "write -P 0x22 2M 192k",
        "write -z 2M 64k",
        "write -P 0x33 3M 4k",
        "write -P 0x44 4M 1M",
        "write -z 4352k 64k",
    ]

    @Test("qcow2 with data, zero and unallocated clusters reads as qemu-img convert does",
          arguments: [4096, 65536, 2 << 20])
    func qcow2MatchesQemu(clusterSize: Int) throws {
        let dir = try TemporaryDirectory()
        let image = dir.file("a.qcow2")
        // Not a multiple of any cluster size: the last cluster is partial.
        let size: UInt64 = 6 << 20 + 3584
        try Fixture.randomQcow2(image, size: Int(size), clusterSize: clusterSize, seed: UInt64(clusterSize), in: dir)
        try Fixture.qemuIO(image, Self.patternWrites + ["write -P 0x55 \(size - 4096) 4096"])
        let expected = try Fixture.guestBytes(image, in: dir)

        let reader = try openImage(path: image)
        #expect(reader.format == .qcow2)
        #expect(reader.virtualSize == size)
        #expect(reader.clusterSize == clusterSize)
        #expect(try Fixture.readAll(reader) == expected)
        #expect(try Fixture.readChunked(reader, chunk: 3 * 4096 + 7) == expected)
        #expect(try reader.mapping() == Fixture.qemuMapping(image))
    }

    @Test("random sub-ranges read the same bytes as the whole image")
    func randomRanges() async throws {
        let dir = try TemporaryDirectory()
        let image = dir.file("a.qcow2")
        let size: UInt64 = 6 << 20
        try Fixture.randomQcow2(image, size: Int(size), clusterSize: 4096, seed: 99, in: dir)
        try Fixture.qemuIO(image, Self.patternWrites)
        let expected = try Fixture.guestBytes(image, in: dir)
        let reader = try openImage(path: image)
        await propertyCheck(count: 200, input: Gen.uint64(in: 0...(size - 1)), Gen.int(in: 0...300_000)) { start, want in
            let count = Int(min(UInt64(want), size - start))
            let got = try Fixture.read(reader, at: start, count: count)
            #expect(got[...] == expected[Int(start)..<(Int(start) + count)])
        }
    }

    @Test("compressed images (zlib and zstd) decompress to what qemu-img reads",
          arguments: ["zlib", "zstd"], [4096, 65536, 2 << 20])
    func compressed(type: String, clusterSize: Int) throws {
        let dir = try TemporaryDirectory()
        let source = dir.file("source.raw"), image = dir.file("c.qcow2")
        try Fixture.mixedRaw(source, size: 5 << 20 + 512, seed: UInt64(clusterSize) ^ UInt64(type.utf8.count))
        try Fixture.qemuImg("convert", "-c", "-O", "qcow2", "-o", "compression_type=\(type),cluster_size=\(clusterSize)",
                            source, image)
        let reader = try #require(try openImage(path: image) as? Qcow2Reader)
        #expect(reader.header.compressionType == (type == "zstd" ? 1 : 0))
        // The test means nothing unless some clusters really are compressed.
        let states = (0..<reader.geometry.guestClusters).map { reader.clusterState(ofGuestCluster: $0) }
        #expect(states.contains { if case .compressed = $0 { true } else { false } })
        let expected = try Fixture.bytes(of: source)
        #expect(try Fixture.readAll(reader) == expected)
        #expect(try Fixture.readChunked(reader, chunk: 5000) == expected)
        #expect(try reader.mapping() == Fixture.qemuMapping(image))
    }

    @Test("a two-level backing chain reads through to the base, names resolved relative to the image")
    func backingChain() throws {
        let dir = try TemporaryDirectory()
        let base = dir.file("base.qcow2"), mid = dir.file("mid.qcow2"), top = dir.file("top.qcow2")
        try Fixture.create(base, size: 8 << 20)
        try Fixture.qemuIO(base, ["write -P 0xaa 0 2M", "write -P 0xbb 4M 1M", "write -P 0xbc 7M 1M"])
        try Fixture.create(mid, size: 8 << 20, backing: "base.qcow2")
        try Fixture.qemuIO(mid, ["write -P 0xcc 1M 512k", "write -z 4M 64k", "write -P 0xcd 7M 4k"])
        // The top is larger than its backing files: beyond them it reads as zero.
        try Fixture.create(top, size: 12 << 20, backing: "mid.qcow2")
        try Fixture.qemuIO(top, ["write -P 0xdd 1536k 4k", "write -P 0xee 10M 64k", "write -z 0 64k"])

        let reader = try #require(try openImage(path: top) as? Qcow2Reader)
        #expect(reader.backingFile == "mid.qcow2")
        #expect(reader.backingChainDepth == 2)
        #expect(reader.backing?.path == mid)
        #expect(try Fixture.readAll(reader) == Fixture.guestBytes(top, in: dir))
        #expect(try Fixture.readChunked(reader, chunk: 300_000) == Fixture.guestBytes(top, in: dir))
        #expect(try reader.mapping() == Fixture.qemuMapping(top))
    }

    @Test("a raw backing file named by the backing format extension")
    func rawBacking() throws {
        let dir = try TemporaryDirectory()
        let base = dir.file("base.img"), top = dir.file("top.qcow2")
        try Fixture.mixedRaw(base, size: 3 << 20, seed: 7)
        try Fixture.create(top, size: 4 << 20, backing: base, backingFormat: "raw")
        try Fixture.qemuIO(top, ["write -P 0x77 1M 64k", "write -z 2M 128k"])
        let reader = try #require(try openImage(path: top) as? Qcow2Reader)
        #expect(reader.backing?.format == .raw)
        #expect(reader.backingChainDepth == 1)
        #expect(try Fixture.readAll(reader) == Fixture.guestBytes(top, in: dir))
    }

    @Test("a sparse raw file: bytes as on disk, holes from SEEK_HOLE as qemu-img map sees them")
    func rawFile() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("disk.img")
        try Shell.check(["truncate", "-s", "8M", path])
        try Fixture.qemuIO(path, format: "raw", ["write -P 0x12 1M 64k", "write -P 0x34 5M 2M"])
        let reader = try openImage(path: path)
        #expect(reader is RawReader)
        #expect(reader.format == .raw)
        #expect(reader.virtualSize == 8 << 20)
        #expect(try Fixture.readAll(reader) == Fixture.bytes(of: path))
        let mapping = try reader.mapping()
        #expect(mapping == [
            ImageExtent(offset: 0, length: 1 << 20, kind: .zero),
            ImageExtent(offset: 1 << 20, length: 64 << 10, kind: .data),
            ImageExtent(offset: 1 << 20 + 64 << 10, length: 4 << 20 - 64 << 10, kind: .zero),
            ImageExtent(offset: 5 << 20, length: 2 << 20, kind: .data),
            ImageExtent(offset: 7 << 20, length: 1 << 20, kind: .zero),
        ])
        #expect(mapping == (try Fixture.qemuMapping(path, format: "raw")))
        // A window that starts and ends inside extents is clipped to it.
        #expect(try reader.mapping(from: 1 << 20 + 4096, length: 4 << 20) == [
            ImageExtent(offset: 1 << 20 + 4096, length: 60 << 10, kind: .data),
            ImageExtent(offset: 1 << 20 + 64 << 10, length: 4 << 20 - 64 << 10, kind: .zero),
            ImageExtent(offset: 5 << 20, length: 4096, kind: .data),
        ])
    }

    @Test("a qcow2 mapping window is clipped to the window")
    func qcow2MappingWindow() throws {
        let dir = try TemporaryDirectory()
        let image = dir.file("a.qcow2")
        try Fixture.create(image, size: 6 << 20)
        try Fixture.qemuIO(image, Self.patternWrites)
        let reader = try openImage(path: image)
        #expect(try reader.mapping(from: 100_000, length: 1 << 20) == [
            ImageExtent(offset: 100_000, length: 196_608 - 100_000, kind: .data),
            ImageExtent(offset: 196_608, length: 100_000 + 1 << 20 - 196_608, kind: .zero),
        ])
        #expect(try reader.mapping(from: 5, length: 0) == [])
    }

    @Test("reads and mappings past the virtual size are refused, naming the image")
    func outOfRange() throws {
        let dir = try TemporaryDirectory()
        let image = dir.file("a.qcow2"), raw = dir.file("b.img")
        try Fixture.create(image, size: 1 << 20)
        try Shell.check(["truncate", "-s", "1M", raw])
        for path in [image, raw] {
            let reader = try openImage(path: path)
            #expect(try Fixture.read(reader, at: (1 << 20) - 10, count: 10) == [UInt8](repeating: 0, count: 10))
            let readError = #expect(throws: ImageFormatError.self) { try Fixture.read(reader, at: (1 << 20) - 10, count: 20) }
            #expect("\(readError!)".contains(path))
            #expect("\(readError!)".contains("past the virtual size 0x100000"))
            #expect(throws: ImageFormatError.self) { try reader.mapping(from: 1 << 20, length: 1) }
            #expect(throws: ImageFormatError.self) { try Fixture.read(reader, at: UInt64.max - 1, count: 4) }
        }
    }

    @Test("an empty file and a file shorter than the magic open as raw")
    func tinyFiles() throws {
        let dir = try TemporaryDirectory()
        let empty = dir.file("empty"), short = dir.file("short")
        _ = FileManager.default.createFile(atPath: empty, contents: nil)
        _ = FileManager.default.createFile(atPath: short, contents: Data([0x51, 0x46]))
        #expect(try openImage(path: empty).virtualSize == 0)
        #expect(try openImage(path: empty).mapping() == [])
        #expect(try openImage(path: short).format == .raw)
        for path in [empty, short] {
            let error = #expect(throws: ImageFormatError.self) { try Qcow2Reader(path: path) }
            #expect("\(error!)" == "\(path) is not a qcow2 image (bad magic)")
        }
    }

    @Test("version 2 images read like version 3 ones")
    func version2() throws {
        let dir = try TemporaryDirectory()
        let image = dir.file("v2.qcow2")
        try Fixture.qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", image, "4M")
        try Fixture.qemuIO(image, ["write -P 0x61 64k 64k", "write -P 0x62 2M 100k", "write -z 2M 64k"])
        let reader = try #require(try openImage(path: image) as? Qcow2Reader)
        #expect(reader.header.version == 2)
        #expect(try Fixture.readAll(reader) == Fixture.guestBytes(image, in: dir))
        #expect(try reader.mapping() == Fixture.qemuMapping(image))
    }
}
