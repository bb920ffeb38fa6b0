import Foundation
import Testing
import TestSupport
@testable import Backup
@testable import BlockIO
@testable import Images

/// Incremental chains, with the write sets of QEMU's incremental-backup test
/// (iotests 124) on a 64 MiB device with 512-byte sectors. Here the changed
/// ranges are given directly (the bitmap supplies them in the daemon) or found
/// by the digest rescan; qemu-img is the judge of every image.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct IncrementalBackupTests {
    typealias Write = QemuIncrementalScenario.Write
    static let prefill = QemuIncrementalScenario.prefill
    static let setA = QemuIncrementalScenario.setA
    static let setB = QemuIncrementalScenario.setB

    func apply(_ writes: [Write], to device: LoopDevice) throws { try QemuIncrementalScenario.apply(writes, to: device) }

    func extents(_ writes: [Write]) -> [Extent] { writes.map { Extent(offset: $0.offset, length: UInt64($0.length)) } }

    /// Every image of the chain is clean, and the newest equals a reference full backup.
    func checkChain(_ images: [String], device: LoopDevice, dir: TemporaryDirectory, step: String) throws {
        for image in images { try QemuImg.check(image) }
        #expect(try QemuImg.identical(images.last!, device.path), "\(step): newest image differs from the device")
        let reference = dir.file("reference-\(step).qcow2")
        _ = try FullBackup.run(BackupRequest(device: device.path, target: reference))
        #expect(try QemuImg.identical(images.last!, reference), "\(step): newest image differs from a reference full backup")
        #expect(try Verify.againstDigests(image: images.last!).ok)
    }

    @Test(arguments: [false, true])
    func qemuChainScenario(rescan: Bool) throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 64 << 20, in: dir.path, sectorSize: 512)
        try apply(Self.prefill, to: device)
        let full = dir.file("0-full.qcow2")
        _ = try FullBackup.run(BackupRequest(device: device.path, target: full))
        var chain = [full]

        func incremental(_ name: String, _ writes: [Write]) throws -> IncrementalSummary {
            let target = dir.file(name)
            let s = try IncrementalBackup.run(IncrementalRequest(device: device.path, previousImage: chain.last!,
                                                                 target: target, changed: rescan ? nil : extents(writes)))
            chain.append(target)
            return s
        }

        // An empty incremental is valid and holds nothing.
        let empty = try incremental("1-inc.qcow2", [])
        #expect(empty.backingFile == "0-full.qcow2")
        #expect(rescan ? empty.unchangedBytes == 64 << 20 : empty.backup.bytesRead == 0)
        try checkChain(chain, device: device, dir: dir, step: "empty")

        try apply(Self.setA, to: device)
        let a = try incremental("2-inc.qcow2", Self.setA)
        if !rescan { #expect(a.backup.bytesRead == 458_752) }  // the count QEMU's test expects at 64 KiB
        try checkChain(chain, device: device, dir: dir, step: "A")

        try apply(Self.setB, to: device)
        _ = try incremental("3-inc.qcow2", Self.setB)
        try checkChain(chain, device: device, dir: dir, step: "B")

        // Each overlay holds only changed clusters: far smaller than a full image.
        for image in chain.dropFirst() {
            let size = try FileManager.default.attributesOfItem(atPath: image)[.size] as! UInt64
            #expect(size < 4 << 20, "\(image) is \(size) bytes")
        }
        #expect(try Shell.check(["qemu-img", "info", "--backing-chain", chain.last!]).contains("0-full.qcow2"))
    }

    /// The rescan finds a change nobody reported; a list of extents that misses
    /// it does not — which is why an inconsistent bitmap must never be trusted.
    @Test func rescanFindsUnreportedWrites() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path, fill: .randomWithZeroRuns(run: 2 << 20))
        let full = dir.file("full.qcow2")
        _ = try FullBackup.run(BackupRequest(device: device.path, target: full))
        try device.write([UInt8](repeating: 0x11, count: 4096), at: 5 << 20 + 8192)
        try device.write([UInt8](repeating: 0, count: 65_536), at: 0)   // data turned into zeros
        let rescanned = dir.file("rescan.qcow2")
        let s = try IncrementalBackup.run(IncrementalRequest(device: device.path, previousImage: full,
                                                             target: rescanned, changed: nil))
        #expect(s.mode == "rescan")
        #expect(s.unchangedBytes == (16 << 20) - 2 * 65_536)
        try QemuImg.check(rescanned)
        #expect(try QemuImg.identical(rescanned, device.path))
    }

    @Test func incrementalRefusesAChainWithoutDigestsOrOfAnotherSize() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 8 << 20, in: dir.path, fill: .random)
        let other = try LoopDevice(size: 16 << 20, in: dir.path, name: "other.img", fill: .random)
        let full = dir.file("full.qcow2")
        _ = try FullBackup.run(BackupRequest(device: device.path, target: full))
        let wrongSize = #expect(throws: BackupError.self) {
            try IncrementalBackup.run(IncrementalRequest(device: other.path, previousImage: full,
                                                         target: dir.file("x.qcow2"), changed: []))
        }
        #expect(wrongSize?.description.contains("needs a new full backup") == true)
        try FileManager.default.removeItem(atPath: full + ".digests")
        let noDigests = #expect(throws: BackupError.self) {
            try IncrementalBackup.run(IncrementalRequest(device: device.path, previousImage: full,
                                                         target: dir.file("y.qcow2"), changed: []))
        }
        #expect(noDigests?.description.contains("has no digest file") == true)
        #expect(!FileManager.default.fileExists(atPath: dir.file("x.qcow2")))
        #expect(!FileManager.default.fileExists(atPath: dir.file("y.qcow2.partial")))
    }
}
