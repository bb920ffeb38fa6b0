import Foundation
import PropertyBased
import Testing
import TestSupport
@testable import BlockIO
@testable import Images

/// The qcow2 writer checked by qemu-img: every image it writes passes
/// `qemu-img check` and reads back, through qemu-img, as the data written.
@Suite struct Qcow2WriterTests {
    /// Writes the given guest clusters (value → fill byte; 0 → zero cluster)
    /// and returns the raw image qemu-img reads back from it.
    func writeAndConvert(dir: TemporaryDirectory, name: String, virtualSize: UInt64, clusterSize: Int,
                         clusters: [Int: UInt8], backing: String? = nil,
                         compression: Qcow2Writer.Compression = .none) throws -> [UInt8] {
        let path = dir.file(name)
        let writer = try Qcow2Writer(path: path, virtualSize: virtualSize, clusterSize: clusterSize,
                                     backingFile: backing, compression: compression)
        let buf = AlignedBuffer(count: clusterSize)
        for (cluster, value) in clusters.sorted(by: { $0.key < $1.key }) {
            if value == 0 { writer.markZero(guestCluster: UInt64(cluster)); continue }
            memset(buf.pointer, Int32(value), clusterSize)
            // A few bytes that differ keep compressed clusters honest.
            buf.pointer.storeBytes(of: UInt32(cluster).bigEndian, as: UInt32.self)
            if compression == .none {
                let host = writer.allocate(guestCluster: UInt64(cluster), count: 1)
                try writer.file.write(from: buf.pointer, count: clusterSize, at: host)
            } else {
                try writer.writeCompressed(guestCluster: UInt64(cluster), data: buf.pointer, count: clusterSize)
            }
        }
        try writer.finish()
        try QemuImg.check(path)
        let raw = dir.file(name + ".raw")
        try Shell.check(["qemu-img", "convert", "-O", "raw", path, raw])
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: raw)))
    }

    /// Compares two byte arrays and names the first difference (an #expect on
    /// the arrays themselves would diff megabytes on failure).
    func sameBytes(_ a: [UInt8], _ b: [UInt8], _ what: String) {
        guard a != b else { return }
        let i = a.indices.first { $0 < b.count && a[$0] != b[$0] } ?? min(a.count, b.count)
        Issue.record("\(what): \(a.count) vs \(b.count) bytes, first difference at offset \(i)")
    }

    func expected(virtualSize: UInt64, clusterSize: Int, clusters: [Int: UInt8], base: [UInt8]? = nil) -> [UInt8] {
        var out = base ?? [UInt8](repeating: 0, count: Int(virtualSize))
        for (cluster, value) in clusters {
            let start = cluster * clusterSize
            let end = min(start + clusterSize, Int(virtualSize))
            for i in start..<end { out[i] = value }
            if value != 0 {
                withUnsafeBytes(of: UInt32(cluster).bigEndian) { b in
                    for j in 0..<min(4, end - start) { out[start + j] = b[j] }
                }
            }
        }
        return out
    }

    @Test func emptyImageIsValid() throws {
        let dir = try TemporaryDirectory()
        let data = try writeAndConvert(dir: dir, name: "empty.qcow2", virtualSize: 10 << 20, clusterSize: 65_536, clusters: [:])
        sameBytes(data, [UInt8](repeating: 0, count: 10 << 20), "empty image")
    }

    /// Random sparse maps of clusters, odd virtual sizes, every cluster size.
    @Test func randomClusterMapsReadBackThroughQemu() async throws {
        let dir = try TemporaryDirectory()
        await propertyCheck(count: 12, input: Gen.int(in: 9...21), Gen.int(in: 1...40), Gen.int(in: 0...255).array(of: 0...30),
                            Gen.bool) { bits, sizeClusters, values, compress in
            let cs = 1 << bits
            let size = UInt64(sizeClusters * cs - (sizeClusters > 1 ? 512 : 0))
            var clusters: [Int: UInt8] = [:]
            for (i, v) in values.enumerated() { clusters[(i * 7 + v) % sizeClusters] = UInt8(v | 1) }
            let name = "p-\(bits)-\(sizeClusters)-\(values.count)-\(compress).qcow2"
            do {
                let data = try writeAndConvert(dir: dir, name: name, virtualSize: size, clusterSize: cs,
                                               clusters: clusters, compression: compress ? .zstd : .none)
                sameBytes(data, expected(virtualSize: size, clusterSize: cs, clusters: clusters), name)
            } catch {
                Issue.record("\(name): \(error)")
            }
        }
    }

    /// An overlay with a backing file: zero clusters hide the base, unallocated
    /// clusters show it, and qemu-img follows the relative backing name.
    @Test func overlayOnABackingFile() throws {
        let dir = try TemporaryDirectory()
        let cs = 65_536
        let size: UInt64 = 4 << 20
        let baseClusters: [Int: UInt8] = Dictionary(uniqueKeysWithValues: (0..<64).map { ($0, UInt8(0x40 + $0)) })
        let base = try writeAndConvert(dir: dir, name: "base.qcow2", virtualSize: size, clusterSize: cs, clusters: baseClusters)
        let top: [Int: UInt8] = [3: 0xAA, 4: 0, 10: 0, 63: 0xBB]
        let data = try writeAndConvert(dir: dir, name: "top.qcow2", virtualSize: size, clusterSize: cs,
                                       clusters: top, backing: "base.qcow2")
        sameBytes(data, expected(virtualSize: size, clusterSize: cs, clusters: top, base: base), "overlay")
        let info = try Shell.check(["qemu-img", "info", "--output=json", dir.file("top.qcow2")])
        #expect(info.contains("\"backing-filename\": \"base.qcow2\""))
        #expect(info.contains("\"backing-filename-format\": \"qcow2\""))
    }

    @Test func anUnfinishedImageIsNotAnImage() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("unfinished.qcow2")
        let writer = try Qcow2Writer(path: path, virtualSize: 1 << 20)
        let host = writer.allocate(guestCluster: 0, count: 1)
        let buf = AlignedBuffer(count: 65_536)
        memset(buf.pointer, 1, 65_536)
        try writer.file.write(from: buf.pointer, count: 65_536, at: host)
        // No finish(): the header was never written.
        #expect(throws: (any Error).self) { try openImage(path: path) }
        #expect(try Shell.run(["qemu-img", "info", "-f", "qcow2", path]).status != 0)
    }
}
