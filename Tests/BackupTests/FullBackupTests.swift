import Foundation
import Testing
import TestSupport
@testable import Backup
@testable import BlockIO
@testable import Images

/// Full backups of real loop devices, checked by qemu-img (the outside oracle),
/// by ringback's own verify, and by restoring to a second device.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct FullBackupTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var size: UInt64
        var sectorSize: Int
        var directIO: Bool
        var format: ImageFormatChoice
        var engine: EngineChoice
        var fill: LoopDevice.Fill
        var clusterSize: Int = 64 << 10
        var testDescription: String {
            "\(size) B, \(sectorSize) B sectors, dio \(directIO), \(format), \(engine.rawValue), cluster \(clusterSize)"
        }
    }

    /// 64 MiB + 4097 bytes, rounded up to the sector size.
    static func oddSize(sector: Int) -> UInt64 { UInt64((64 << 20 + 4097 + sector - 1) / sector * sector) }

    static let cases: [Case] = [
        Case(size: oddSize(sector: 512), sectorSize: 512, directIO: false, format: .qcow2, engine: .ioUring, fill: .random),
        Case(size: oddSize(sector: 4096), sectorSize: 4096, directIO: true, format: .qcow2, engine: .ioUring,
             fill: .randomWithZeroRuns(run: 3 << 20 + 12_288)),
        Case(size: oddSize(sector: 512), sectorSize: 512, directIO: true, format: .raw, engine: .ioUring,
             fill: .randomWithZeroRuns(run: 1 << 20 + 512)),
        Case(size: oddSize(sector: 4096), sectorSize: 4096, directIO: false, format: .raw, engine: .synchronous,
             fill: .random),
        Case(size: oddSize(sector: 512), sectorSize: 512, directIO: false, format: .qcow2, engine: .synchronous,
             fill: .randomWithZeroRuns(run: 700_000)),
        Case(size: 32 << 20, sectorSize: 512, directIO: true, format: .qcow2, engine: .ioUring,
             fill: .randomWithZeroRuns(run: 5000), clusterSize: 4096),
        Case(size: 40 << 20, sectorSize: 512, directIO: false, format: .qcow2, engine: .ioUring,
             fill: .randomWithZeroRuns(run: 3 << 20), clusterSize: 2 << 20),
    ]

    @Test(arguments: cases)
    func backupIsIdenticalToTheDevice(_ c: Case) throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: c.size, in: dir.path, sectorSize: c.sectorSize, directIO: c.directIO, fill: c.fill)
        let image = dir.file("backup.\(c.format.rawValue)")
        var request = BackupRequest(device: device.path, target: image)
        request.format = c.format
        request.options.engine = c.engine
        request.options.clusterSize = c.clusterSize
        request.options.chunkSize = max(c.clusterSize, 1 << 20)
        let summary = try FullBackup.run(request)

        #expect(summary.engine == (c.engine == .synchronous ? "sync" : "io_uring"))
        #expect(summary.size == c.size)
        #expect(summary.bytesRead == c.size)
        if case .randomWithZeroRuns = c.fill { #expect(summary.zeroBytes > 0) } else { #expect(summary.zeroBytes < UInt64(c.clusterSize)) }
        #expect(!FileManager.default.fileExists(atPath: image + ".partial"))
        if c.format == .qcow2 { try QemuImg.check(image) }
        #expect(try QemuImg.identical(image, device.path, formatA: c.format.rawValue, formatB: "raw"))
        #expect(try Verify.againstDigests(image: image).ok)
        #expect(try Verify.againstDevice(image: image, device: device.path).ok)

        // Restore onto a second device of the same size and compare it with the first.
        let second = try LoopDevice(size: c.size, in: dir.path, name: "second.img", sectorSize: c.sectorSize)
        try second.write([UInt8](repeating: 0xEE, count: 1 << 20), at: 0)  // something to overwrite
        _ = try Restore.run(image: image, to: second.path, force: false)
        #expect(try QemuImg.identical(device.path, second.path, formatA: "raw", formatB: "raw"))
    }

    @Test func zeroClustersAreNotWritten() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 64 << 20, in: dir.path, fill: .none)
        try device.write([UInt8](repeating: 7, count: 65_536), at: 10 << 20)
        let image = dir.file("sparse.qcow2")
        let summary = try FullBackup.run(BackupRequest(device: device.path, target: image))
        #expect(summary.zeroBytes == (64 << 20) - 65_536)
        // One data cluster, plus header and tables: far below the device size.
        let allocated = try FileManager.default.attributesOfItem(atPath: image)[.size] as! UInt64
        #expect(allocated < 1 << 20)
        #expect(try QemuImg.identical(image, device.path))
        let raw = dir.file("sparse.raw")
        var rawRequest = BackupRequest(device: device.path, target: raw)
        rawRequest.format = .raw
        _ = try FullBackup.run(rawRequest)
        var st = stat()
        stat(raw, &st)
        #expect(UInt64(st.st_size) == 64 << 20)
        #expect(UInt64(st.st_blocks) * 512 < 1 << 20)   // a sparse file: only the data cluster is allocated
        #expect(try QemuImg.identical(raw, device.path, formatA: "raw", formatB: "raw"))
    }

    @Test func zstdCompressedImageIsValidAndSmaller() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path, fill: .randomWithZeroRuns(run: 4 << 20))
        let text = Array(String(repeating: "ringback compresses text well, cluster after cluster. ", count: 40_000).utf8)
        try device.write(Array(text.prefix(2 << 20)), at: 4 << 20)
        let image = dir.file("z.qcow2")
        var request = BackupRequest(device: device.path, target: image)
        request.compression = .zstd
        let summary = try FullBackup.run(request)
        try QemuImg.check(image)
        let info = try Shell.check(["qemu-img", "info", image])
        #expect(info.contains("compression type: zstd"))
        #expect(try QemuImg.identical(image, device.path))
        #expect(try Verify.againstDigests(image: image).ok)
        // 16 MiB of random data + 2 MiB of text: the text shrinks.
        #expect(summary.bytesWritten < 17 << 20)
    }

    @Test func aSpeedLimitedCopyIsStillComplete() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 8 << 20, in: dir.path, fill: .random)
        let image = dir.file("slow.qcow2")
        var request = BackupRequest(device: device.path, target: image)
        request.options.speedLimit = 32 << 20
        _ = try FullBackup.run(request)
        #expect(try QemuImg.identical(image, device.path))
    }

    @Test func aCancelledBackupLeavesNoImage() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path, fill: .random)
        let image = dir.file("cancelled.qcow2")
        let control = CopyControl()
        control.cancel()
        #expect(throws: CopyError.cancelled) { try FullBackup.run(BackupRequest(device: device.path, target: image), control: control) }
        #expect(!FileManager.default.fileExists(atPath: image))
        #expect(!FileManager.default.fileExists(atPath: image + ".partial"))
        #expect(!FileManager.default.fileExists(atPath: image + ".digests"))
    }

    /// A raw backup straight onto another block device.
    @Test func rawBackupOntoADevice() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path, fill: .randomWithZeroRuns(run: 1 << 20))
        let target = try LoopDevice(size: 16 << 20, in: dir.path, name: "t.img", fill: .random)
        var request = BackupRequest(device: device.path, target: target.path)
        request.format = .raw
        _ = try FullBackup.run(request)
        #expect(try QemuImg.identical(device.path, target.path, formatA: "raw", formatB: "raw"))
    }
}
