import BlockIO
import Foundation
import PropertyBased
import TestSupport
import Testing
@testable import DirtyBitmaps

@Suite struct PersistenceTests {
    static let identity = DeviceIdentity(wholeDisk: 8 << 8 | 16, partitionStart: 1 << 20, size: 64 << 20,
                                         filesystemUUID: "0f3c1b9e-5d7a-4c1e-9a55-1c2d3e4f5a6b", serial: "WD-1234")
    static let boot = "6c1f3f0a-8a52-4f8e-bd4e-2a7d8b0c9d11"

    static func sample() throws -> DirtyBitmap {
        var b = try DirtyBitmap(name: "nightly", deviceSize: 64 << 20, granularity: 32_768, persistent: true)
        b.mark(offset: 0, length: 512)
        b.mark(offset: 16 << 20, length: 256 << 10)
        b.mark(offset: (64 << 20) - 1, length: 1)
        return b
    }

    @Test func crc32cCheckValue() {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
    }

    @Test func roundTripIsConsistentAndExact() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("nightly.bitmap")
        var b = try Self.sample()
        try b.save(to: path, identity: Self.identity, bootID: Self.boot, inUse: false)
        #expect(b.generation == 1)
        let loaded = try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot)
        #expect(loaded.doubts.isEmpty)
        #expect(loaded.bitmap == b)
        #expect(loaded.savedIdentity == Self.identity && loaded.savedBootID == Self.boot)
        // Saving again replaces the file, counts the save, and leaves no temporary file.
        try b.save(to: path, identity: Self.identity, bootID: Self.boot, inUse: false)
        #expect(try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot).bitmap.generation == 2)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["nightly.bitmap"])
    }

    /// Any bitmap (granularity, size, bits, enabled state) survives a save and a load.
    @Test func roundTripProperty() async throws {
        let dir = try TemporaryDirectory()
        await propertyCheck(count: 60, input: Geometry.granularityBits, Geometry.granules, Gen.bool, Geometry.writes) {
            bits, granules, enabled, raw in
            let g = UInt64(1) << bits
            let size = Geometry.deviceSize(granularityBits: bits, granules: granules, tail: granules % 4)
            var b = try DirtyBitmap(name: "b-\(bits)-\(granules)", deviceSize: size, granularity: g, enabled: enabled)
            for w in Geometry.writes(from: raw, deviceSize: size, granularity: g) { b.setDirty(offset: w.offset, length: w.length) }
            let id = DeviceIdentity(wholeDisk: 7 << 8, size: size)
            let path = dir.file("p.bitmap")
            try b.save(to: path, identity: id, bootID: "boot", inUse: false)
            let loaded = try DirtyBitmap.load(from: path, expecting: id, bootID: "boot")
            b.isPersistent = true
            #expect(loaded.doubts.isEmpty && loaded.bitmap == b)
        }
    }

    /// Saving through the set during a job writes the parent with the writes the
    /// successor recorded since, and advances the generation held in the set.
    @Test func savingFromASetDuringAJobLosesNoWrite() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("b")
        var set = BitmapSet(device: "/dev/sdb1", deviceSize: 64 << 20)
        try set.add(name: "nightly", persistent: true)
        set.mark(offset: 0, length: 1)
        try set.save("nightly", to: path, identity: Self.identity, bootID: Self.boot, inUse: true)
        try set.createSuccessor("nightly")
        set.mark(offset: 32 << 20, length: 1)
        try set.save("nightly", to: path, identity: Self.identity, bootID: Self.boot, inUse: false)
        #expect(set["nightly"]!.generation == 2 && set["nightly"]!.isBusy)
        let l = try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot)
        #expect(l.doubts.isEmpty && l.bitmap.generation == 2 && l.bitmap.isEnabled && !l.bitmap.isBusy)
        #expect(Array(l.bitmap.dirtyExtents) == [Extent(offset: 0, length: 65_536), Extent(offset: 32 << 20, length: 65_536)])
    }

    @Test func inUseFlagLeftSetMeansTheDaemonDied() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("b")
        var b = try Self.sample()
        try b.save(to: path, identity: Self.identity, bootID: Self.boot, inUse: false)
        try BitmapFile.setInUse(true, at: path)  // the daemon takes it …
        let died = try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot)  // … and is killed
        #expect(died.doubts == [.leftInUse] && died.bitmap.isInconsistent)
        #expect(died.bitmap.words == b.words)
        try BitmapFile.setInUse(false, at: path)  // a clean shutdown
        #expect(try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot).doubts.isEmpty)
        try b.save(to: path, identity: Self.identity, bootID: Self.boot, inUse: true)
        #expect(try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot).doubts == [.leftInUse])
    }

    @Test func anotherBootIsInconsistent() throws {
        let dir = try TemporaryDirectory()
        var b = try Self.sample()
        try b.save(to: dir.file("b"), identity: Self.identity, bootID: Self.boot, inUse: false)
        let l = try DirtyBitmap.load(from: dir.file("b"), expecting: Self.identity, bootID: "another-boot")
        #expect(l.doubts == [.bootChanged(saved: Self.boot, current: "another-boot")])
        #expect(l.bitmap.isInconsistent)
        #expect("\(l.doubts[0])".contains(Self.boot))
    }

    static let otherDevices: [DeviceIdentity] = {
        let i = identity
        return [
            DeviceIdentity(wholeDisk: 8 << 8 | 32, partitionStart: i.partitionStart, size: i.size, filesystemUUID: i.filesystemUUID, serial: i.serial),
            DeviceIdentity(wholeDisk: i.wholeDisk, partitionStart: 2 << 20, size: i.size, filesystemUUID: i.filesystemUUID, serial: i.serial),
            DeviceIdentity(wholeDisk: i.wholeDisk, partitionStart: i.partitionStart, size: i.size, filesystemUUID: nil, serial: i.serial),
            DeviceIdentity(wholeDisk: i.wholeDisk, partitionStart: i.partitionStart, size: i.size, filesystemUUID: i.filesystemUUID, serial: "WD-9999"),
            DeviceIdentity(wholeDisk: i.wholeDisk, partitionStart: i.partitionStart, size: i.size, filesystemUUID: i.filesystemUUID, serial: nil),
        ]
    }()

    /// A device that is not the one saved (another number, partition, file system
    /// or serial, same size) gets the saved bits but is inconsistent.
    @Test(arguments: otherDevices)
    func anotherDeviceOfTheSameSizeIsInconsistent(other: DeviceIdentity) throws {
        let dir = try TemporaryDirectory()
        var b = try Self.sample()
        try b.save(to: dir.file("b"), identity: Self.identity, bootID: Self.boot, inUse: false)
        let l = try DirtyBitmap.load(from: dir.file("b"), expecting: other, bootID: Self.boot)
        #expect(l.doubts == [.deviceChanged(saved: Self.identity, current: other)])
        #expect(l.bitmap.isInconsistent && l.bitmap.words == b.words)
    }

    @Test func aResizedDeviceGetsAFullyDirtyInconsistentBitmap() throws {
        let dir = try TemporaryDirectory()
        var b = try Self.sample()
        try b.save(to: dir.file("b"), identity: Self.identity, bootID: Self.boot, inUse: false)
        var bigger = Self.identity
        bigger.size = 100 << 20
        let l = try DirtyBitmap.load(from: dir.file("b"), expecting: bigger, bootID: Self.boot)
        #expect(l.bitmap.isInconsistent && l.bitmap.deviceSize == 100 << 20 && l.bitmap.count == 100 << 20)
        var set = BitmapSet(device: "/dev/sdb1", deviceSize: 100 << 20)
        try set.add(l.bitmap)  // so that it can be removed
        try set.remove("nightly")
    }

    @Test func savedInconsistentStaysInconsistent() throws {
        let dir = try TemporaryDirectory()
        var b = try Self.sample()
        b.markInconsistent()
        try b.save(to: dir.file("b"), identity: Self.identity, bootID: Self.boot, inUse: false)
        let l = try DirtyBitmap.load(from: dir.file("b"), expecting: Self.identity, bootID: Self.boot)
        #expect(l.doubts == [.savedInconsistent] && l.bitmap.isInconsistent)
    }

    @Test func damagedOrTruncatedBitsAreInconsistentAndFullyDirty() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("b")
        var b = try Self.sample()
        try b.save(to: path, identity: Self.identity, bootID: Self.boot, inUse: false)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 100] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let flipped = try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot)
        #expect(flipped.doubts == [.damaged("checksum mismatch")])
        #expect(flipped.bitmap.isInconsistent && flipped.bitmap.count == 64 << 20)
        try Data(bytes.dropLast(8)).write(to: URL(fileURLWithPath: path))
        let truncated = try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot)
        #expect(truncated.bitmap.isInconsistent && truncated.doubts.count == 1)
    }

    /// Any single corrupted byte anywhere in the file is caught: the load either
    /// fails naming the path or gives an inconsistent bitmap — never a consistent one.
    @Test func noSingleByteCorruptionLoadsAsConsistent() async throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("b")
        var b = try DirtyBitmap(name: "x", deviceSize: 1 << 20, granularity: 4096)
        b.mark(offset: 12_345, length: 100_000)
        try b.save(to: path, identity: Self.identity.resized(1 << 20), bootID: Self.boot, inUse: false)
        let clean = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        await propertyCheck(count: 300, input: Gen.int(in: 0...(clean.count - 1)), Gen.int(in: 1...255)) { at, xor in
            var bytes = clean
            bytes[at] ^= UInt8(xor)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let l = try DirtyBitmap.load(from: path, expecting: Self.identity.resized(1 << 20), bootID: Self.boot)
                #expect(l.bitmap.isInconsistent && !l.doubts.isEmpty)
            } catch let e as BitmapFileError {
                #expect(e.path == path)
            }
        }
    }

    @Test(arguments: [("empty", [UInt8]()), ("garbage", Array("not a bitmap at all, just some text".utf8)),
                      ("digest file", Array("RBDIGEST".utf8) + [UInt8](repeating: 0, count: 100))])
    func unparseableFilesAreErrorsNamingThePath(what: String, bytes: [UInt8]) throws {
        let dir = try TemporaryDirectory()
        let path = dir.file(what)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let e = #expect(throws: BitmapFileError.self) {
            try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot)
        }
        #expect(e?.description.hasPrefix("bitmap file \(path) is not a ringback bitmap file") == true)
    }

    @Test func damagedHeaderAndMissingFileAreErrors() throws {
        let dir = try TemporaryDirectory()
        let path = dir.file("b")
        var b = try Self.sample()
        try b.save(to: path, identity: Self.identity, bootID: Self.boot, inUse: false)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[72] ^= 1  // the first byte of the name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let e = #expect(throws: BitmapFileError.self) { try DirtyBitmap.load(from: path, expecting: Self.identity, bootID: Self.boot) }
        #expect(e?.description == "bitmap file \(path) has a damaged header (checksum mismatch)")
        #expect(throws: BitmapFileError.self) { try BitmapFile.setInUse(true, at: path) }
        let missing = #expect(throws: SystemError.self) {
            try DirtyBitmap.load(from: dir.file("none"), expecting: Self.identity, bootID: Self.boot)
        }
        #expect(missing?.description.contains(dir.file("none")) == true)
    }

    @Test func saveRefusesAnIdentityOfAnotherSize() throws {
        let dir = try TemporaryDirectory()
        var b = try Self.sample()
        #expect(throws: BitmapFileError.self) {
            try b.save(to: dir.file("b"), identity: Self.identity.resized(1 << 30), bootID: Self.boot, inUse: false)
        }
        #expect(b.generation == 0)
        let unwritable = #expect(throws: SystemError.self) {
            try b.save(to: dir.file("no/such/dir/b"), identity: Self.identity, bootID: Self.boot, inUse: false)
        }
        #expect(unwritable?.description.contains("no/such/dir") == true)
    }
}

extension DeviceIdentity {
    func resized(_ size: UInt64) -> DeviceIdentity {
        var i = self
        i.size = size
        return i
    }
}
