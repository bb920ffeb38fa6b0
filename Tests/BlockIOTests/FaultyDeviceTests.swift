import Foundation
import Testing
import TestSupport
@testable import BlockIO

/// FaultyLoopDevice against the real kernel: the faults it sets reach readers
/// of the loop device as EIO — `dd` and BlockIO's own O_DIRECT BlockFile —
/// only where asked, and it leaves nothing behind.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct FaultyDeviceTests {
    static let faultOffset: UInt64 = 1 << 20
    static let faultLength: UInt64 = 64 << 10

    @Test func readsOverlappingTheFaultFailWithEIO() throws {
        let device = try FaultyLoopDevice(size: 8 << 20, fill: .random)
        defer { device.detach() }
        let dir = try TemporaryDirectory()
        try device.failReads(offset: Self.faultOffset, length: Self.faultLength)

        for direct in [true, false] {
            let r = try dd(device, offset: Self.faultOffset, count: Int(Self.faultLength), direct: direct, to: dir.file("out"))
            #expect(r.status != 0, "dd direct=\(direct) read the faulty range")
            #expect(r.stderr.contains("Input/output error"), "\(r.stderr)")
        }
        // Outside the range dd reads what the backing file holds.
        for offset in [Self.faultOffset - Self.faultLength, Self.faultOffset + Self.faultLength, 6 << 20] {
            let r = try dd(device, offset: offset, count: Int(Self.faultLength), direct: true, to: dir.file("out"))
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir.file("out"))))
                    == expected(device, offset: offset, count: Int(Self.faultLength)))
        }

        let file = try BlockFile(path: device.path, mode: .read)
        #expect(file.direct && file.kind == .blockDevice)
        // Whole range, straddling its start, inside its last page.
        for (offset, count) in [(Self.faultOffset, Int(Self.faultLength)), (Self.faultOffset - 4096, 8192),
                                (Self.faultOffset + Self.faultLength - 4096, 4096)] {
            let error = #expect(throws: SystemError.self) { try read(file, offset: offset, count: count) }
            #expect(error?.errno == EIO, "\(String(describing: error))")
        }
        for offset: UInt64 in [0, Self.faultOffset - 4096, Self.faultOffset + Self.faultLength, 8 << 20 - 4096] {
            #expect(try read(file, offset: offset, count: 4096) == expected(device, offset: offset, count: 4096))
        }
    }

    @Test func onceFailsOneReadThenHeals() throws {
        let device = try FaultyLoopDevice(size: 8 << 20, fill: .random)
        defer { device.detach() }
        let file = try BlockFile(path: device.path, mode: .read)
        try device.failReads(offset: Self.faultOffset, length: Self.faultLength, mode: .once)

        let error = #expect(throws: SystemError.self) { try read(file, offset: Self.faultOffset, count: 4096) }
        #expect(error?.errno == EIO)
        #expect(try read(file, offset: Self.faultOffset, count: 4096) == expected(device, offset: Self.faultOffset, count: 4096))
        #expect(try read(file, offset: Self.faultOffset, count: Int(Self.faultLength))
                == expected(device, offset: Self.faultOffset, count: Int(Self.faultLength)))
        #expect(try device.injectedFailures == .init(reads: 1, writes: 0))
    }

    @Test func clearHealsEveryFault() throws {
        let device = try FaultyLoopDevice(size: 8 << 20, fill: .random)
        defer { device.detach() }
        let file = try BlockFile(path: device.path, mode: .read)
        try device.failReads(offset: Self.faultOffset, length: Self.faultLength)
        try device.failReads(offset: 4 << 20, length: 4096)
        for _ in 0..<2 {
            #expect(throws: SystemError.self) { try read(file, offset: Self.faultOffset, count: 4096) }
            #expect(throws: SystemError.self) { try read(file, offset: 4 << 20, count: 4096) }
        }

        try device.clearFaults()
        for offset in [Self.faultOffset, 4 << 20] {
            #expect(try read(file, offset: offset, count: 4096) == expected(device, offset: offset, count: 4096))
        }
        let dir = try TemporaryDirectory()
        #expect(try dd(device, offset: Self.faultOffset, count: Int(Self.faultLength), direct: false, to: dir.file("out")).status == 0)
        // Clearing keeps the count of what was injected before.
        #expect(try device.injectedFailures == .init(reads: 4, writes: 0))
    }

    /// A 4 KiB O_DIRECT read is one request all the way down, so each failed
    /// read is exactly one injected failure, and reads elsewhere add none.
    @Test func injectedFailuresCountEachFailedRequest() throws {
        let device = try FaultyLoopDevice(size: 8 << 20, fill: .random)
        defer { device.detach() }
        let file = try BlockFile(path: device.path, mode: .read)
        #expect(try device.injectedFailures == .init(reads: 0, writes: 0))
        try device.failReads(offset: 2 << 20, length: 16 << 10)
        for i in 0..<5 {
            #expect(throws: SystemError.self) { try read(file, offset: 2 << 20 + UInt64(i % 4) * 4096, count: 4096) }
        }
        for i in 0..<10 { _ = try read(file, offset: 3 << 20 + UInt64(i) * 4096, count: 4096) }
        #expect(try device.injectedFailures == .init(reads: 5, writes: 0))
    }

    @Test func writesOverlappingAWriteFaultFail() throws {
        let device = try FaultyLoopDevice(size: 8 << 20)
        defer { device.detach() }
        try device.failWrites(offset: 2 << 20, length: 8192)

        let error = #expect(throws: FaultFSError.self) { try device.writeRandom(offset: 2 << 20, length: 4096) }
        #expect(error?.errno == EIO, "\(String(describing: error))")
        #expect(try device.injectedFailures.writes >= 1)
        #expect(try expected(device, offset: 2 << 20, count: 4096) == [UInt8](repeating: 0, count: 4096))

        // Elsewhere the bytes reach the backing file, and reads are not affected.
        let written = try device.writeRandom(offset: 3 << 20, length: 8192)
        #expect(try expected(device, offset: 3 << 20, count: 8192) == written)
        let file = try BlockFile(path: device.path, mode: .read)
        #expect(try read(file, offset: 2 << 20, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try device.injectedFailures.reads == 0)
    }

    @Test func detachLeavesNoLoopDeviceMountOrProcess() throws {
        let device = try FaultyLoopDevice(size: 4 << 20)
        let leftovers = Leftovers(of: device)
        // Each check sees the device while it is there, so it can fail.
        let before = try leftovers.list()
        #expect(before == ["loop device", "mount", "faultfs process", "folder"])
        device.detach()
        let after = try leftovers.list()
        #expect(after == [])
        device.detach()  // again, as deinit will: nothing left to do, nothing fails
    }

    @Test func releasingTheObjectTearsDown() throws {
        func make() throws -> Leftovers { try Leftovers(of: FaultyLoopDevice(size: 4 << 20)) }
        let after = try make().list()
        #expect(after == [])
    }

    /// A test that fails while it still holds the device open: the mount is
    /// busy, so it is detached lazily and faultfs stopped; the loop device goes
    /// when the last descriptor closes (losetup -d set autoclear).
    @Test func detachWhileTheDeviceIsStillOpen() throws {
        let device = try FaultyLoopDevice(size: 4 << 20)
        let leftovers = Leftovers(of: device)
        var file: BlockFile? = try BlockFile(path: device.path, mode: .read)
        device.detach()
        let whileOpen = try leftovers.list()
        #expect(whileOpen == ["loop device"])
        _ = file?.fd
        file = nil
        let afterClose = try leftovers.list(waitingForLoopDevice: true)
        #expect(afterClose == [])
    }
}

/// What a FaultyLoopDevice could leave behind, found by outside tools.
private struct Leftovers {
    let device: String
    let mountPoint: String
    var folder: String { (mountPoint as NSString).deletingLastPathComponent }

    init(of device: FaultyLoopDevice) {
        self.device = device.path
        mountPoint = device.mountPoint
    }

    /// Names of what is still there. With `waitingForLoopDevice`, gives the
    /// loop device's autoclear a few seconds to finish first.
    func list(waitingForLoopDevice: Bool = false) throws -> [String] {
        var found: [String] = []
        var attached = try loopDeviceAttached()
        for _ in 0..<(waitingForLoopDevice ? 50 : 0) where attached {
            usleep(100_000)
            attached = try loopDeviceAttached()
        }
        if attached { found.append("loop device") }
        let mounts = try String(decoding: FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/mounts")).readToEnd() ?? Data(),
                                as: UTF8.self)
        if mounts.contains(" \(mountPoint) ") { found.append("mount") }
        if try Shell.run(["pgrep", "-f", "faultfs.py .* \(mountPoint)$"]).succeeded { found.append("faultfs process") }
        if FileManager.default.fileExists(atPath: folder) { found.append("folder") }
        return found
    }

    /// Whether our loop device is still bound to our image. After a lazy
    /// unmount the kernel names the image by its path inside the detached
    /// mount, `/disk.img`; another test may meanwhile hold the same loopN over
    /// an image of its own, which this does not count.
    private func loopDeviceAttached() throws -> Bool {
        try Shell.check(["losetup", "-a"]).split(separator: "\n").contains {
            $0.hasPrefix("\(device):") && ($0.hasSuffix("(\(mountPoint)/disk.img)") || $0.hasSuffix("(/disk.img)"))
        }
    }
}

/// Reads with BlockIO's own BlockFile (O_DIRECT on a block device).
private func read(_ file: BlockFile, offset: UInt64, count: Int) throws(SystemError) -> [UInt8] {
    let buffer = AlignedBuffer(count: count)
    let n = try file.read(into: buffer.pointer, count: count, at: offset)
    return Array(buffer.bytes.prefix(n))
}

/// What the range holds, read from the backing file behind the mount.
private func expected(_ device: FaultyLoopDevice, offset: UInt64, count: Int) throws -> [UInt8] {
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: device.backingFile))
    defer { try? handle.close() }
    try handle.seek(toOffset: offset)
    return [UInt8](try handle.read(upToCount: count) ?? Data())
}

/// `dd` of one block of `count` bytes at `offset` (a multiple of count) into `output`.
private func dd(_ device: FaultyLoopDevice, offset: UInt64, count: Int, direct: Bool, to output: String) throws -> Shell.Result {
    precondition(offset % UInt64(count) == 0)
    var args = ["dd", "if=\(device.path)", "of=\(output)", "bs=\(count)", "skip=\(offset / UInt64(count))", "count=1",
                "status=none"]
    if direct { args.append("iflag=direct") }
    return try Shell.run(args)
}
