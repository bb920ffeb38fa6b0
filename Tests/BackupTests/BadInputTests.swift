import Foundation
import Testing
import TestSupport
@testable import Backup
@testable import BlockIO
@testable import Images

/// Every refusal names the thing and the reason, and loses nothing: no image
/// appears, no device is written.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)))
struct BadInputTests {
    /// Runs the CLI and returns (status, stderr).
    func ringback(_ args: String...) throws -> (Int32, String) {
        let r = try RingbackBinary.run(args)
        return (r.status, r.stderr)
    }

    func sha(_ path: String) throws -> String {
        try Shell.check(["sha256sum", path]).split(separator: " ")[0].description
    }

    @Test func notABlockDeviceOrFile() throws {
        let dir = try TemporaryDirectory()
        let (status, err) = try ringback("backup", "/dev/null", "--to", dir.file("x.qcow2"))
        #expect(status != 0)
        #expect(err.contains("/dev/null") && err.contains("character device, not a block device or a regular file"))
        let (s2, e2) = try ringback("backup", dir.path, "--to", dir.file("x.qcow2"))
        #expect(s2 != 0 && e2.contains("\(dir.path)") && e2.contains("directory"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("x.qcow2")))
    }

    @Test func missingDevice() throws {
        let dir = try TemporaryDirectory()
        let (status, err) = try ringback("backup", "/dev/ringback-no-such-disk", "--to", dir.file("x.qcow2"))
        #expect(status != 0)
        #expect(err.contains("cannot open /dev/ringback-no-such-disk for reading: No such file or directory (ENOENT)"))
    }

    @Test func noPermission() throws {
        let dir = try TemporaryDirectory(under: "/tmp")
        let device = try LoopDevice(size: 4 << 20, in: dir.path, fill: .random)
        try Shell.check(["chmod", "0777", dir.path])
        // As an unprivileged user, the device cannot be opened.
        let r = try Shell.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               RingbackBinary.path, "backup", device.path, "--to", dir.file("x.qcow2")])
        #expect(r.status != 0)
        #expect(r.stderr.contains("cannot open \(device.path) for reading: Permission denied (EACCES)"))
    }

    @Test func sourceEqualToTarget() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 4 << 20, in: dir.path, fill: .random)
        let before = try sha(device.path)
        let (status, err) = try ringback("backup", device.path, "--to", device.path, "--format", "raw")
        #expect(status != 0)
        #expect(err.contains("Source and target cannot be the same"))
        #expect(try sha(device.path) == before)
        // The same file under two names is still the same.
        let (s2, e2) = try ringback("backup", device.backingFile, "--to", dir.path + "/./" + "disk.img", "--format", "raw", "--force")
        #expect(s2 != 0 && e2.contains("Source and target cannot be the same"))
    }

    @Test func targetInsideAFilesystemMountedFromTheSource() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path)
        try Shell.check(["mkfs.ext4", "-q", device.path])
        let mnt = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try Shell.check(["mount", device.path, mnt])
        defer { _ = try? Shell.run(["umount", mnt]) }
        let (status, err) = try ringback("backup", device.path, "--to", mnt + "/self.qcow2")
        #expect(status != 0)
        #expect(err.contains("is inside a filesystem mounted from the source \(device.path)"))
        #expect(err.contains(mnt))
        #expect(!FileManager.default.fileExists(atPath: mnt + "/self.qcow2"))
        #expect(!FileManager.default.fileExists(atPath: mnt + "/self.qcow2.partial"))
    }

    @Test(arguments: ["1000", "256", "0", "3K", "4M"])
    func badClusterSize(_ size: String) throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 4 << 20, in: dir.path)
        let (status, err) = try ringback("backup", device.path, "--to", dir.file("x.qcow2"), "--cluster-size", size)
        #expect(status != 0)
        #expect(err.contains("cluster size"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("x.qcow2")))
    }

    @Test func existingImageIsNotReplacedWithoutForce() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 4 << 20, in: dir.path, fill: .random)
        let image = dir.file("x.qcow2")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: image))
        let (status, err) = try ringback("backup", device.path, "--to", image)
        #expect(status != 0 && err.contains("image \(image) already exists; use --force"))
        #expect(try String(contentsOfFile: image, encoding: .utf8) == "precious")
        #expect(try ringback("backup", device.path, "--to", image, "--force").0 == 0)
        #expect(try QemuImg.identical(image, device.path))
    }

    /// A truncated or corrupted image is refused by verify and by restore, and
    /// restore writes nothing to its target.
    @Test func truncatedOrCorruptedImage() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path, fill: .random)
        let target = try LoopDevice(size: 16 << 20, in: dir.path, name: "target.img", fill: .random)
        let targetBefore = try sha(target.path)
        let good = dir.file("good.qcow2")
        #expect(try ringback("backup", device.path, "--to", good).0 == 0)

        // Truncated: cut in the middle of the data; keep the digest file.
        let cut = dir.file("cut.qcow2")
        try Shell.check(["cp", good, cut]); try Shell.check(["cp", good + ".digests", cut + ".digests"])
        try Shell.check(["truncate", "-s", "5M", cut])
        var (status, err) = try ringback("verify", cut)
        #expect(status == 2 && err.contains(cut) && err.contains("truncated"))
        (status, err) = try ringback("restore", cut, "--to", target.path)
        #expect(status != 0 && err.contains("truncated") && err.contains("nothing was written to \(target.path)"))
        #expect(try sha(target.path) == targetBefore)

        // Corrupted data bytes: the tables are fine, the digests catch it.
        let bad = dir.file("bad.qcow2")
        try Shell.check(["cp", good, bad]); try Shell.check(["cp", good + ".digests", bad + ".digests"])
        try Shell.check(["sh", "-c", "printf 'XXXX' | dd of=\(bad) bs=1 seek=\(3 * 65_536 + 100) conv=notrunc status=none"])
        (status, err) = try ringback("verify", bad)
        #expect(status == 1)
        (status, err) = try ringback("restore", bad, "--to", target.path)
        #expect(status != 0 && err.contains("does not match its digest file") && err.contains("nothing was written"))
        #expect(try sha(target.path) == targetBefore)

        // A corrupted table entry: refused at open.
        let table = dir.file("table.qcow2")
        try Shell.check(["cp", good, table])
        let l1Offset = try Shell.check(["sh", "-c", "od -An -tx1 -j40 -N8 \(table) | tr -d ' \\n'"])
        try Shell.check(["sh", "-c", "printf '\\x00\\x00\\x7f\\xff\\xff\\xff\\x00\\x00' | dd of=\(table) bs=1 seek=\(UInt64(l1Offset, radix: 16)!) conv=notrunc status=none"])
        (status, err) = try ringback("restore", table, "--to", target.path)
        #expect(status != 0 && err.contains(table))
        #expect(try sha(target.path) == targetBefore)

        // A corrupted digest file is named as such.
        try Shell.check(["sh", "-c", "printf 'Z' | dd of=\(good).digests bs=1 seek=60 conv=notrunc status=none"])
        (status, err) = try ringback("verify", good)
        #expect(status == 2 && err.contains("digest file \(good).digests is corrupt"))
    }

    @Test func restoreRefusesMountedSmallerOrExistingTargets() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path, fill: .random)
        let image = dir.file("x.qcow2")
        #expect(try ringback("backup", device.path, "--to", image).0 == 0)

        let small = try LoopDevice(size: 8 << 20, in: dir.path, name: "small.img")
        var (status, err) = try ringback("restore", image, "--to", small.path)
        #expect(status != 0 && err.contains("is smaller than the image"))

        let mounted = try LoopDevice(size: 32 << 20, in: dir.path, name: "mounted.img")
        try Shell.check(["mkfs.ext4", "-q", mounted.path])
        let mnt = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try Shell.check(["mount", mounted.path, mnt])
        defer { _ = try? Shell.run(["umount", mnt]) }
        (status, err) = try ringback("restore", image, "--to", mounted.path)
        #expect(status != 0 && err.contains("is mounted at \(mnt)"))

        let file = dir.file("existing.raw")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: file))
        (status, err) = try ringback("restore", image, "--to", file)
        #expect(status != 0 && err.contains("already exists; use --force"))
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me")
        #expect(try ringback("restore", image, "--to", file, "--force").0 == 0)
        #expect(try QemuImg.identical(file, device.path, formatA: "raw", formatB: "raw"))
    }

    /// io_uring refused by a real seccomp filter: the automatic engine falls back
    /// to pread/pwrite with a warning; `--engine io_uring` fails clearly.
    @Test func fallbackWhenIOUringIsRefused() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 8 << 20, in: dir.path, fill: .randomWithZeroRuns(run: 1 << 20))
        let wrapper = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("tools/without-io-uring.py").path
        let image = dir.file("fallback.qcow2")
        let r = try Shell.run([wrapper, RingbackBinary.path, "backup", device.path, "--to", image, "--json"])
        #expect(r.status == 0)
        #expect(r.stderr.contains("io_uring is unavailable") && r.stderr.contains("EPERM"))
        #expect(r.stdout.contains("\"engine\":\"sync\""))
        #expect(try QemuImg.identical(image, device.path))
        let forced = try Shell.run([wrapper, RingbackBinary.path, "backup", device.path, "--to", dir.file("f2.qcow2"),
                                    "--engine", "io_uring"])
        #expect(forced.status != 0 && forced.stderr.contains("io_uring is unavailable"))
        #expect(!FileManager.default.fileExists(atPath: dir.file("f2.qcow2.partial")))
    }
}
