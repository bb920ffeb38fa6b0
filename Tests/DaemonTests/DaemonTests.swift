import ControlProtocol
import Foundation
import Testing
import TestSupport

/// ringbackd end to end: the real daemon binary, real tracefs tracking of real
/// loop devices, and the CLI through the control socket; qemu-img judges images.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct DaemonTests {
    typealias Write = QemuIncrementalScenario.Write
    static let prefill = QemuIncrementalScenario.prefill
    static let setA = QemuIncrementalScenario.setA
    static let setB = QemuIncrementalScenario.setB

    func apply(_ writes: [Write], to device: LoopDevice) throws { try QemuIncrementalScenario.apply(writes, to: device) }

    /// Dirty bytes the writes make at a granularity: distinct granules touched × granularity.
    func expectedCount(_ writes: [Write], granularity: UInt64) -> UInt64 {
        var granules = Set<UInt64>()
        for w in writes {
            for g in (w.offset / granularity)...((w.offset + UInt64(w.length) - 1) / granularity) { granules.insert(g) }
        }
        return UInt64(granules.count) * granularity
    }

    func bitmap(_ daemon: DaemonProcess, _ device: String, _ name: String) throws -> JSONValue? {
        let block = try QMPClient(path: daemon.socket).execute("query-block")
        let entry = block.arrayValue?.first { $0["device"]?.stringValue == device }
        return entry?["dirty-bitmaps"]?.arrayValue?.first { $0["name"]?.stringValue == name }
    }

    func count(_ daemon: DaemonProcess, _ device: String, _ name: String) throws -> UInt64 {
        try QMPClient(path: daemon.socket).execute("x-tracker-barrier", ["node": .string(device)])
        return UInt64(try bitmap(daemon, device, name)?["count"]?.intValue ?? -1)
    }

    func newest(_ dir: String) -> String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return dir + "/" + names.filter { $0.hasSuffix(".qcow2") }.sorted().last!
    }

    func images(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".qcow2") }.sorted().map { dir + "/" + $0 }
    }

    /// Newest image equals the device and a reference full backup; every image passes qemu-img check.
    func checkChain(_ chain: String, _ device: LoopDevice, _ dir: TemporaryDirectory, _ step: String) throws {
        for image in images(chain) { try QemuImg.check(image) }
        #expect(try QemuImg.identical(newest(chain), device.path), "\(step): chain differs from the device")
        let reference = dir.file("ref-\(step).qcow2")
        #expect(try RingbackBinary.run(["backup", device.path, "--to", reference, "--force"]).succeeded)
        #expect(try QemuImg.identical(newest(chain), reference), "\(step): chain differs from a reference full backup")
    }

    @Test(arguments: [UInt64(65_536), 32_768, 131_072])
    func qemuIncrementalChainWithABitmap(granularity: UInt64) throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 64 << 20, in: dir.path, sectorSize: 512)
        let daemon = try DaemonProcess(in: dir)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)

        try apply(Self.prefill, to: device)
        var r = try daemon.ringback(["backup", device.path, "--sync", "full", "--to", chain])
        #expect(r.succeeded, "\(r.stderr)")
        r = try daemon.ringback(["bitmap", "add", device.path, "b0", "--granularity", String(granularity)])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try count(daemon, device.path, "b0") == 0)

        // An empty incremental is valid.
        r = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "b0", "--to", chain])
        #expect(r.succeeded, "\(r.stderr)")
        try checkChain(chain, device, dir, "empty")

        try apply(Self.setA, to: device)
        let countA = try count(daemon, device.path, "b0")
        #expect(countA == expectedCount(Self.setA, granularity: granularity))
        if granularity == 65_536 { #expect(countA == 458_752) }
        r = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "b0", "--to", chain])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try count(daemon, device.path, "b0") == 0)
        try checkChain(chain, device, dir, "A")

        try apply(Self.setB, to: device)
        #expect(try count(daemon, device.path, "b0") == expectedCount(Self.setB, granularity: granularity))
        r = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "b0", "--to", chain])
        #expect(r.succeeded, "\(r.stderr)")
        try checkChain(chain, device, dir, "B")
        #expect(images(chain).count == 4)

        // Removing the last bitmap ends tracking and removes the tracefs instance.
        #expect(try daemon.ringback(["bitmap", "remove", device.path, "b0"]).succeeded)
        #expect(try QMPClient(path: daemon.socket).execute("query-block") == .array([]))
        daemon.stop()
        #expect(!FileManager.default.fileExists(atPath: "/sys/kernel/tracing/instances/ringback-" + (device.path as NSString).lastPathComponent))
    }

    /// sync=bitmap with each bitmap-mode: never keeps the bits, on-success and
    /// always clear them when the backup succeeds.
    @Test(arguments: ["never", "on-success", "always"])
    func bitmapSyncModes(mode: String) throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path, fill: .random)
        let daemon = try DaemonProcess(in: dir)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        #expect(try daemon.ringback(["bitmap", "add", device.path, "b"]).succeeded)
        #expect(try daemon.ringback(["backup", device.path, "--sync", "full", "--to", chain]).succeeded)
        try device.write([UInt8](repeating: 9, count: 3 * 65_536), at: 4 << 20)
        #expect(try count(daemon, device.path, "b") == 3 * 65_536)
        let r = try daemon.ringback(["backup", device.path, "--sync", "bitmap", "--bitmap", "b", "--bitmap-mode", mode, "--to", chain])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(try count(daemon, device.path, "b") == (mode == "never" ? 3 * 65_536 : 0))
        try QemuImg.check(newest(chain))
        #expect(try QemuImg.identical(newest(chain), device.path))
        _ = try daemon.ringback(["bitmap", "remove", device.path, "b"])
    }

    /// The bitmap commands through the CLI, with their effect on what is recorded.
    @Test func bitmapCommandsThroughTheCLI() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let daemon = try DaemonProcess(in: dir)
        func run(_ args: String...) throws { let r = try daemon.ringback(args); #expect(r.succeeded, "\(args): \(r.stderr)") }
        try run("track", device.path)
        try run("bitmap", "add", device.path, "a")
        try run("bitmap", "add", device.path, "b", "--granularity", "4K", "--disabled")
        try device.write([UInt8](repeating: 1, count: 4096), at: 1 << 20)
        #expect(try count(daemon, device.path, "a") == 65_536)
        #expect(try count(daemon, device.path, "b") == 0)          // disabled: records nothing
        try run("bitmap", "enable", device.path, "b")
        try device.write([UInt8](repeating: 2, count: 4096), at: 3 << 20)
        #expect(try count(daemon, device.path, "b") == 4096)
        try run("bitmap", "disable", device.path, "a")
        try device.write([UInt8](repeating: 3, count: 4096), at: 5 << 20)
        #expect(try count(daemon, device.path, "a") == 2 * 65_536)     // not the write at 5 MiB
        #expect(try count(daemon, device.path, "b") == 2 * 4096)
        // Merge ORs b (4 KiB granules) into a (64 KiB granules): the 5 MiB granule is added.
        try run("bitmap", "merge", device.path, "a", "--from", "b")
        #expect(try count(daemon, device.path, "a") == 3 * 65_536)
        let list = try daemon.ringback(["bitmap", "list", device.path, "--json"])
        let parsed = try JSONValue.parse(Data(list.stdout.utf8))
        #expect(parsed.arrayValue?.count == 2)
        #expect(parsed.arrayValue?.first { $0["name"] == .string("a") }?["recording"] == .bool(false))
        try run("bitmap", "clear", device.path, "a")
        #expect(try count(daemon, device.path, "a") == 0)
        let missing = try daemon.ringback(["bitmap", "clear", device.path, "zz"])
        #expect(!missing.succeeded && missing.stderr.contains("Dirty bitmap 'zz' not found"))
        let busyUntrack = try daemon.ringback(["untrack", device.path])
        #expect(!busyUntrack.succeeded && busyUntrack.stderr.contains("still has dirty bitmaps"))
        try run("bitmap", "remove", device.path, "a")
        try run("bitmap", "remove", device.path, "b")
        #expect(!FileManager.default.fileExists(atPath: "/sys/kernel/tracing/instances/ringback-" + (device.path as NSString).lastPathComponent))
    }

    @Test func validationFollowsQemu() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 8 << 20, in: dir.path)
        let daemon = try DaemonProcess(in: dir)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        var r = try daemon.ringback(["bitmap", "add", device.path, "b0", "--granularity", "64000"])
        #expect(!r.succeeded && r.stderr.contains("64000"))
        #expect(try daemon.ringback(["bitmap", "add", device.path, "b0"]).succeeded)
        r = try daemon.ringback(["bitmap", "add", device.path, "b0"])
        #expect(!r.succeeded && r.stderr.contains("b0"))
        let cases: [([String], String)] = [
            (["--sync", "incremental"], "must provide a valid bitmap name for 'incremental' sync mode"),
            (["--sync", "bitmap"], "must provide a valid bitmap name for 'bitmap' sync mode"),
            (["--sync", "incremental", "--bitmap", "b0", "--bitmap-mode", "always"], "must be 'on-success' when using sync mode 'incremental'"),
            (["--sync", "bitmap", "--bitmap", "b0"], "Bitmap sync mode must be given when providing a bitmap"),
            (["--sync", "full", "--bitmap", "b0", "--bitmap-mode", "never"], "has no meaningful effect"),
            (["--sync", "incremental", "--bitmap", "nope"], "Dirty bitmap 'nope' not found"),
            (["--sync", "incremental", "--bitmap", "b0"], "no full backup in"),
        ]
        for (args, message) in cases {
            let r = try daemon.ringback(["backup", device.path, "--to", chain] + args)
            #expect(!r.succeeded && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        r = try daemon.ringback(["backup", device.path, "--sync", "full", "--format", "raw", "--to", device.path])
        #expect(!r.succeeded && r.stderr.contains("Source and target cannot be the same"))
        #expect(images(chain).isEmpty)
    }

    @Test func restartsKeepOrDoubtTheBitmap() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let boot = dir.file("boot_id")
        try "boot-one".write(toFile: boot, atomically: true, encoding: .utf8)
        var daemon = try DaemonProcess(in: dir, bootIDFile: boot)
        #expect(try daemon.ringback(["bitmap", "add", device.path, "p", "--persistent"]).succeeded)
        try device.write([UInt8](repeating: 1, count: 65_536), at: 0)
        #expect(try count(daemon, device.path, "p") == 65_536)

        // A clean restart: the count is kept, writes made while it was down are
        // caught from the instance's buffer, and it keeps recording.
        daemon.stop()
        try device.write([UInt8](repeating: 2, count: 65_536), at: 1 << 20)
        try daemon.start()
        #expect(try bitmap(daemon, device.path, "p")?["inconsistent"] == .bool(false))
        #expect(try count(daemon, device.path, "p") == 2 * 65_536)
        try device.write([UInt8](repeating: 3, count: 65_536), at: 2 << 20)
        #expect(try count(daemon, device.path, "p") == 3 * 65_536)

        // kill -9: the in-use flag stays set, so the bitmap comes back inconsistent.
        daemon.kill()
        try daemon.start()
        #expect(try bitmap(daemon, device.path, "p")?["inconsistent"] == .bool(true))
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        #expect(try daemon.ringback(["backup", device.path, "--sync", "full", "--to", chain]).succeeded)
        let refused = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "p", "--to", chain])
        #expect(!refused.succeeded && refused.stderr.contains("is inconsistent") && refused.stderr.contains("--rescan"))
        try device.write([UInt8](repeating: 4, count: 4096), at: 5 << 20)
        let rescanned = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "p", "--rescan", "--to", chain])
        #expect(rescanned.succeeded, "\(rescanned.stderr)")
        #expect(try QemuImg.identical(newest(chain), device.path))
        #expect(try bitmap(daemon, device.path, "p")?["inconsistent"] == .bool(false))
        #expect(try count(daemon, device.path, "p") == 0)

        // Another boot: writes before this daemon started were never seen.
        daemon.stop()
        try "boot-two".write(toFile: boot, atomically: true, encoding: .utf8)
        try daemon.start()
        #expect(try bitmap(daemon, device.path, "p")?["inconsistent"] == .bool(true))
        daemon.stop()
        daemon = try DaemonProcess(in: dir, stateDir: daemon.stateDir, bootIDFile: boot)
        _ = try daemon.ringback(["bitmap", "remove", device.path, "p"])
        _ = try daemon.ringback(["untrack", device.path])
    }

    /// Writes made while the daemon is down overflow a tiny trace buffer: the
    /// restarted daemon sees the loss and the bitmap becomes inconsistent —
    /// every time, never a silently incomplete bitmap.
    @Test(arguments: 1...3)
    func eventsLostWhileDownMakeTheBitmapInconsistent(round: Int) throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 16 << 20, in: dir.path)
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--trace-buffer-kib", "4"])
        #expect(try daemon.ringback(["bitmap", "add", device.path, "p", "--persistent"]).succeeded)
        daemon.stop()
        try Shell.check(["fio", "--name=flood", "--filename=\(device.path)", "--rw=randwrite", "--bs=4k",
                         "--ioengine=io_uring", "--direct=1", "--iodepth=32", "--size=16M", "--io_size=32M",
                         "--output=/dev/null"])
        try daemon.start()
        #expect(try bitmap(daemon, device.path, "p")?["inconsistent"] == .bool(true), "\(daemon.log())")
        _ = try daemon.ringback(["bitmap", "remove", device.path, "p"])
    }

    @Test func aReplacedDeviceDoesNotInheritTheBitmap() throws {
        let dir = try TemporaryDirectory()
        var device: LoopDevice? = try LoopDevice(size: 16 << 20, in: dir.path, name: "first.img")
        let path = device!.path
        let daemon = try DaemonProcess(in: dir)
        #expect(try daemon.ringback(["bitmap", "add", path, "p", "--persistent"]).succeeded)
        daemon.stop()
        // Another file of the same size attached at the same loop number.
        try? Shell.run(["rmdir", "/sys/kernel/tracing/instances/ringback-" + (path as NSString).lastPathComponent])
        device!.detach()
        device = nil
        let other = dir.file("second.img")
        try Shell.check(["truncate", "-s", String(16 << 20), other])
        try Shell.check(["losetup", path, other])
        defer { _ = try? Shell.run(["losetup", "-d", path]) }
        try daemon.start()
        let b = try bitmap(daemon, path, "p")
        #expect(b == nil || b?["inconsistent"] == .bool(true), "a bitmap of the old device must not be trusted: \(String(describing: b))")
        _ = try daemon.ringback(["bitmap", "remove", path, "p"])
        _ = try daemon.ringback(["untrack", path])
    }

    /// The chain folder fills up during an incremental: the job fails, the
    /// bitmap keeps every bit, and the next incremental is valid.
    @Test func aFailedIncrementalKeepsTheBitmap() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path)
        let daemon = try DaemonProcess(in: dir)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        try Shell.check(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", chain])
        defer { _ = try? Shell.run(["umount", chain]) }
        #expect(try daemon.ringback(["backup", device.path, "--sync", "full", "--bitmap", "b", "--bitmap-mode", "on-success",
                                     "--to", chain]).stderr.contains("not found"))
        #expect(try daemon.ringback(["bitmap", "add", device.path, "b"]).succeeded)
        #expect(try daemon.ringback(["backup", device.path, "--sync", "full", "--to", chain]).succeeded)
        try LoopDevice.writeRandom(regions: [(4 << 20, 8 << 20)], to: device.path)
        let before = try count(daemon, device.path, "b")
        #expect(before == 8 << 20)
        let failed = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "b", "--to", chain])
        #expect(!failed.succeeded && failed.stderr.contains("ENOSPC"), "\(failed.stderr)")
        #expect(try count(daemon, device.path, "b") == before)
        #expect(images(chain).count == 1)
        try Shell.check(["mount", "-o", "remount,size=64M", chain])
        let ok = try daemon.ringback(["backup", device.path, "--sync", "incremental", "--bitmap", "b", "--to", chain])
        #expect(ok.succeeded, "\(ok.stderr)")
        try QemuImg.check(newest(chain))
        #expect(try QemuImg.identical(newest(chain), device.path))
        _ = try daemon.ringback(["bitmap", "remove", device.path, "b"])
        _ = try daemon.ringback(["untrack", device.path])
    }
}
