import ControlProtocol
import Foundation
import Testing
import TestSupport

/// Issue 6 in the LVM VM (guest side): tracking LVs through their dm device,
/// the `x-lvm-snapshot` transaction action (classic and thin), the COW
/// overflow failure, and thin_delta incrementals across a reboot.
/// Runs only inside the VM (scripts/lvm-vm.sh); the host suite boots it.
extension GuestTests {
@Suite struct Snapshots {
    typealias Write = QemuIncrementalScenario.Write

    /// The guest's volume group (LVMGuest makes it once, on the VM's blank disks).
    static var vg: String { get throws { try LVMGuest.volumeGroup() } }

    /// Creates a volume; removed (with any snapshot of it) when the test ends.
    final class Volume: @unchecked Sendable {
        let vg: String
        let name: String
        var path: String { "/dev/\(vg)/\(name)" }
        /// The name ringbackd keys the device by (query-block's `device`).
        var node: String { URL(fileURLWithPath: path).resolvingSymlinksInPath().path }
        var full: String { "\(vg)/\(name)" }

        init(_ name: String, size: String, thinPool: String? = nil) throws {
            vg = try Snapshots.vg
            self.name = name
            _ = try? Shell.run(["lvremove", "-q", "-f", "\(vg)/\(name)"])
            if let thinPool {
                if (try? Shell.run(["lvs", "\(vg)/\(thinPool)"]).succeeded) != true {
                    try Shell.check(["lvcreate", "-q", "-y", "-L", "512M", "-T", "\(vg)/\(thinPool)", "--chunksize", "64k"])
                }
                try Shell.check(["lvcreate", "-q", "-y", "-V", size, "-T", "\(vg)/\(thinPool)", "-n", name])
            } else {
                try Shell.check(["lvcreate", "-q", "-y", "-L", size, "-n", name, vg])
            }
        }

        /// Snapshots of this volume that exist now (ringback names them `<lv>-rb-…`).
        func snapshots() throws -> [String] {
            let out = try Shell.check(["lvs", "--noheadings", "-o", "lv_name", vg])
            return out.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("\(name)-rb-") || $0.hasPrefix("\(name)-snap") }
        }

        func write(_ data: [UInt8], at offset: UInt64) throws {
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { throw CommandError("open \(path): errno \(errno)") }
            defer { close(fd) }
            let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            guard n == data.count, fsync(fd) == 0 else { throw CommandError("write \(path): errno \(errno)") }
        }

        func apply(_ writes: [Write]) throws {
            for w in writes { try write([UInt8](repeating: w.pattern, count: w.length), at: w.offset) }
        }

        deinit {
            for s in (try? snapshots()) ?? [] { _ = try? Shell.run(["lvremove", "-q", "-f", "\(vg)/\(s)"]) }
            _ = try? Shell.run(["lvremove", "-q", "-f", full])
        }
    }

    func images(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".qcow2") }.sorted().map { dir + "/" + $0 }
    }

    func backup(_ session: QMPSession, _ volume: Volume, chain: String, sync: String, bitmap: String = "b",
                snapshot: [String: Any] = [:], speed: Int = 0) throws -> JSONValue {
        var snap: [String: JSONValue] = ["device": .string(volume.path)]
        for (k, v) in snapshot { snap[k] = qmpArgs([k: v])[k] }
        var backup = qmpArgs(["device": volume.path, "target": chain, "sync": sync, "bitmap": bitmap,
                              "bitmap-mode": "on-success", "job-id": volume.name])
        if speed > 0 { backup["speed"] = .int(Int64(speed)) }
        try session.execute("transaction", ["actions": .array([
            .object(["type": .string("x-lvm-snapshot"), "data": .object(snap)]),
            .object(["type": .string("drive-backup"), "data": .object(backup)]),
        ])])
        return try session.waitForEnd(of: volume.name)
    }

    /// Item 2: writes to an LV are tracked through its dm device — QEMU's
    /// chain scenario (iotests 124's write sets) on a linear and a thin LV.
    @Test(arguments: [false, true])
    func chainScenarioOnAnLV(thin: Bool) throws {
        let dir = try TemporaryDirectory()
        let volume = try Volume(thin ? "thinchain" : "linchain", size: "64M", thinPool: thin ? "pool" : nil)
        let daemon = try DaemonProcess(in: dir)
        defer { daemon.stop() }
        let session = try QMPSession(socket: daemon.socket)
        try volume.apply(QemuIncrementalScenario.prefill)
        try session.execute("block-dirty-bitmap-add", qmpArgs(["node": volume.path, "name": "b", "granularity": 65536]))
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        for (step, writes) in [("full", [Write]()), ("A", QemuIncrementalScenario.setA), ("B", QemuIncrementalScenario.setB)] {
            try volume.apply(writes)
            if step != "full" {
                let granules = Set(writes.flatMap { w in (w.offset / 65536)...((w.offset + UInt64(w.length) - 1) / 65536) })
                let count = try session.count(volume.node, "b") ?? 0
                #expect(count == UInt64(granules.count) * 65536, "set \(step) on \(volume.full)")
            }
            let end = try backup(session, volume, chain: chain, sync: step == "full" ? "full" : "incremental")
            #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(step): \(end)")
            for image in images(chain) { try QemuImg.check(image) }
            #expect(try QemuImg.identical(try #require(images(chain).last), volume.path), "\(step): chain differs from \(volume.full)")
            #expect(try volume.snapshots().isEmpty, "\(step): the snapshot was not removed")
        }
    }

    /// Item 5: full + two incrementals of an LV with a mounted ext4 and a
    /// writer during the backups; every restored image passes `fsck -fn`.
    @Test func mountedExt4WithAWriter() throws {
        let dir = try TemporaryDirectory()
        let volume = try Volume("fsvol", size: "96M")
        try Shell.check(["mkfs.ext4", "-q", "-F", volume.path])
        let mount = dir.file("mnt")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        try Shell.check(["mount", volume.path, mount])
        defer { _ = try? Shell.run(["umount", "-l", mount]) }
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", dir.file("no-hooks")])
        defer { daemon.stop() }
        let session = try QMPSession(socket: daemon.socket, timeout: 300)
        try session.execute("block-dirty-bitmap-add", qmpArgs(["node": volume.path, "name": "b", "persistent": true]))
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        // The writer: files of random data, rewritten in a loop, until stopped.
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: "/bin/sh")
        writer.arguments = ["-c", "i=0; while [ ! -e \(dir.file("stop")) ]; do dd if=/dev/urandom of=\(mount)/f$((i % 8)) bs=64k count=8 conv=fsync status=none; i=$((i+1)); done"]
        try writer.run()
        defer { FileManager.default.createFile(atPath: dir.file("stop"), contents: nil); writer.waitUntilExit() }
        for (i, sync) in ["full", "incremental", "incremental"].enumerated() {
            let end = try backup(session, volume, chain: chain, sync: sync, snapshot: ["size": 64 << 20])
            #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "backup \(i): \(end)")
            let image = try #require(images(chain).last)
            try QemuImg.check(image)
            let raw = dir.file("restored-\(i).raw")
            try Shell.check(["qemu-img", "convert", "-O", "raw", image, raw])
            let fsck = try Shell.run(["e2fsck", "-fn", raw])
            #expect(fsck.status == 0, "backup \(i): fsck -fn of the restored image: \(fsck.stdout)\(fsck.stderr)")
            try? FileManager.default.removeItem(atPath: raw)
            #expect(try volume.snapshots().isEmpty)
        }
        #expect(images(chain).count == 3)
    }

    /// Item 5: a grouped transaction of two LVs (a linear and a thin one),
    /// each read from its snapshot; both complete, both snapshots go.
    @Test func twoLVsGroupedWithSnapshots() throws {
        let dir = try TemporaryDirectory()
        let a = try Volume("groupa", size: "32M")
        let b = try Volume("groupb", size: "32M", thinPool: "pool")
        try a.write([UInt8](repeating: 0x71, count: 2 << 20), at: 1 << 20)
        try b.write([UInt8](repeating: 0x72, count: 2 << 20), at: 4 << 20)
        let daemon = try DaemonProcess(in: dir)
        defer { daemon.stop() }
        let session = try QMPSession(socket: daemon.socket, timeout: 300)
        var actions: [JSONValue] = []
        for v in [a, b] {
            try session.execute("block-dirty-bitmap-add", qmpArgs(["node": v.path, "name": "g"]))
            let chain = dir.file("chain-\(v.name)")
            try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
            actions.append(action("x-lvm-snapshot", ["device": v.path]))
            actions.append(action("drive-backup", ["device": v.path, "target": chain, "sync": "full", "bitmap": "g",
                                                   "bitmap-mode": "on-success", "job-id": v.name]))
        }
        try session.execute("transaction", ["actions": .array(actions),
                                            "properties": .object(["completion-mode": .string("grouped")])])
        for v in [a, b] {
            let end = try session.waitForEnd(of: v.name)
            #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(v.full): \(end)")
            #expect(end["data"]?["x-summary"]?["x-snapshot"]?.stringValue?.hasPrefix("\(v.full)-rb-") == true)
            let image = try #require(images(dir.file("chain-\(v.name)")).last)
            try QemuImg.check(image)
            #expect(try QemuImg.identical(image, v.path))
            #expect(try v.snapshots().isEmpty, "\(v.full): snapshot left behind")
        }
    }

    /// Item 3: a classic snapshot whose COW space fills during the backup →
    /// the job fails naming the cause, the bitmap keeps its bits, the snapshot
    /// is removed and no image is published.
    @Test func cowOverflowFailsTheJobClearly() throws {
        let dir = try TemporaryDirectory()
        let volume = try Volume("cowvol", size: "64M")
        try volume.write([UInt8](repeating: 0x5a, count: 8 << 20), at: 0)
        let daemon = try DaemonProcess(in: dir)
        defer { daemon.stop() }
        let session = try QMPSession(socket: daemon.socket, timeout: 300)
        try session.execute("block-dirty-bitmap-add", qmpArgs(["node": volume.path, "name": "b"]))
        let before = try session.count(volume.node, "b")
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        // 4 MiB of COW space, a copy held to 1 MiB/s, then 16 MiB of new writes.
        var snap: [String: JSONValue] = ["device": .string(volume.path), "size": .int(4 << 20)]
        snap["snapshot-name"] = .string("cowvol-snap")
        try session.execute("transaction", ["actions": .array([
            .object(["type": .string("x-lvm-snapshot"), "data": .object(snap)]),
            action("drive-backup", ["device": volume.path, "target": chain, "sync": "full", "bitmap": "b",
                                    "bitmap-mode": "on-success", "job-id": "cow", "speed": 1 << 20]),
        ])])
        // (repeating: building a varied 16 MiB array is slow in the guest.)
        try volume.write([UInt8](repeating: 0x77, count: 16 << 20), at: 16 << 20)
        let end = try session.waitForEnd(of: "cow")
        let error = end["data"]?["error"]?.stringValue ?? ""
        #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && error.contains("ran out of its 4 MiB COW space"), "\(end)")
        #expect(error.contains("\(volume.vg)/cowvol-snap"))
        // on-success after a failure: the bitmap keeps what it had and gains the new writes.
        let after = try #require(try session.count(volume.node, "b"))
        #expect(after >= (before ?? 0) + (16 << 20), "the bitmap lost bits: \(before ?? 0) → \(after)")
        #expect(try volume.snapshots().isEmpty, "the overflowed snapshot was not removed")
        #expect(images(chain).isEmpty, "a failed backup published an image")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: chain)) ?? []).isEmpty, "partial files left")
    }

    /// Item 3: a daemon killed while a snapshot's job runs leaves the
    /// snapshot; the next ringbackd removes it at start.
    @Test func aCrashedDaemonsSnapshotIsRemovedAtRestart() throws {
        let dir = try TemporaryDirectory()
        let volume = try Volume("crashvol", size: "64M")
        try volume.write([UInt8](repeating: 0x11, count: 16 << 20), at: 0)
        let daemon = try DaemonProcess(in: dir)
        defer { daemon.stop() }
        let session = try QMPSession(socket: daemon.socket, timeout: 300)
        try session.execute("block-dirty-bitmap-add", qmpArgs(["node": volume.path, "name": "b", "persistent": true]))
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        try session.execute("transaction", ["actions": .array([
            action("x-lvm-snapshot", ["device": volume.path, "snapshot-name": "crashvol-snap"]),
            action("drive-backup", ["device": volume.path, "target": chain, "sync": "full", "bitmap": "b",
                                    "bitmap-mode": "on-success", "job-id": "crash", "speed": 1 << 20]),
        ])])
        try session.waitFor("JOB_STATUS_CHANGE") { $0["id"]?.stringValue == "crash" && $0["status"]?.stringValue == "running" }
        #expect(try volume.snapshots() == ["crashvol-snap"])
        daemon.kill()
        try daemon.start()
        #expect(try volume.snapshots().isEmpty, "restart did not remove the snapshot: \(daemon.log())")
    }

    /// Item 4: thin_delta incrementals across a simulated reboot. The bitmap
    /// is inconsistent after the daemon restarts with a new boot id; the
    /// kept snapshot of the last backup and a new one give the changes by
    /// thin_delta, which re-arms the bitmap without a rescan and copies only
    /// the changed chunks.
    @Test func thinDeltaAcrossAReboot() throws {
        let dir = try TemporaryDirectory()
        let volume = try Volume("deltavol", size: "64M", thinPool: "pool")
        try volume.write([UInt8](repeating: 0x33, count: 8 << 20), at: 0)
        let bootID = dir.file("boot_id")
        try "11111111-1111-1111-1111-111111111111\n".write(toFile: bootID, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(in: dir, bootIDFile: bootID)
        defer { daemon.stop() }
        var session = try QMPSession(socket: daemon.socket, timeout: 300)
        try session.execute("block-dirty-bitmap-add", qmpArgs(["node": volume.path, "name": "b", "persistent": true]))
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        let full = try backup(session, volume, chain: chain, sync: "full", snapshot: ["x-keep": true])
        #expect(full["data"]?["error"] == nil, "\(full)")
        #expect(try volume.snapshots().count == 1, "the full backup's snapshot should be kept as the delta base")

        for round in 1...2 {
            // A reboot: the daemon stops, writes happen unseen, the boot id changes.
            daemon.stop()
            let chunks: [UInt64] = round == 1 ? [3, 200, 201, 900] : [5, 512]
            for c in chunks { try volume.write([UInt8](repeating: UInt8(round * 16 + Int(c % 16)), count: 4096), at: c * 65536 + 8192) }
            try "\(round)2222222-2222-2222-2222-222222222222\n".write(toFile: bootID, atomically: true, encoding: .utf8)
            try daemon.start()
            session = try QMPSession(socket: daemon.socket, timeout: 300)
            #expect(try session.bitmap(volume.node, "b")?["inconsistent"]?.boolValue == true,
                    "round \(round): the reboot left the bitmap consistent")
            let end = try backup(session, volume, chain: chain, sync: "incremental", snapshot: ["x-keep": true])
            #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "round \(round): \(end)")
            let summary = end["data"]?["x-summary"]
            // Round 2 also sees the write made between the rounds (chunk 640).
            let changed = Int64((chunks.count + (round > 1 ? 1 : 0)) * 65536)
            #expect(summary?["x-thin-delta-bytes"]?.intValue == changed, "round \(round): \(String(describing: summary))")
            #expect(summary?["backup"]?["bytes_read"]?.intValue == changed, "round \(round): copied more than the changed chunks")
            for image in images(chain) { try QemuImg.check(image) }
            #expect(try QemuImg.identical(try #require(images(chain).last), volume.path), "round \(round): chain differs from the LV")
            #expect(try volume.snapshots().count == 1, "round \(round): exactly the new base should remain")
            // Re-armed: the bitmap is consistent again and records new writes.
            try volume.write([UInt8](repeating: 0xee, count: 512), at: 40 << 20)
            let rearmed = try session.count(volume.node, "b") ?? 0
            #expect(rearmed == 65536, "round \(round): the re-armed bitmap")
            try volume.write([UInt8](repeating: 0xef, count: 512), at: 40 << 20)
        }
    }

    /// A plan with `lvm-snapshot = true` on a thin LV: its runs read
    /// snapshots, and after a reboot the next run is an incremental from
    /// thin_delta (not a new full backup), equal to the LV.
    @Test func aPlanOnAThinLVSurvivesAReboot() throws {
        let dir = try TemporaryDirectory()
        let volume = try Volume("planvol", size: "32M", thinPool: "pool")
        try volume.write([UInt8](repeating: 0x44, count: 4 << 20), at: 0)
        let repo = dir.file("repo")
        try FileManager.default.createDirectory(atPath: repo, withIntermediateDirectories: true)
        let config = dir.file("ringback.toml")
        try """
            [plan.lv]
            devices = ["\(volume.full)"]
            repository = "\(repo)"
            schedule = "every 1d"
            lvm-snapshot = true
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let bootID = dir.file("boot_id")
        try "33333333-3333-3333-3333-333333333333\n".write(toFile: bootID, atomically: true, encoding: .utf8)
        let daemon = try DaemonProcess(in: dir, bootIDFile: bootID, extraArguments: ["--config", config])
        defer { daemon.stop() }
        var r = try daemon.ringback(["plan", "run", "lv"])
        #expect(r.status == 0, "first run: \(r.stdout)\(r.stderr)")
        daemon.stop()
        try volume.write([UInt8](repeating: 0x45, count: 4096), at: 20 << 20)
        try "44444444-4444-4444-4444-444444444444\n".write(toFile: bootID, atomically: true, encoding: .utf8)
        try daemon.start()
        r = try daemon.ringback(["plan", "run", "lv"])
        #expect(r.status == 0, "run after the reboot: \(r.stdout)\(r.stderr)\n\(daemon.log())")
        let chains = try FileManager.default.contentsOfDirectory(atPath: repo + "/" + volume.full.replacingOccurrences(of: "/", with: "-"))
        #expect(chains.count == 1, "the reboot started a new chain: \(chains)")
        let chain = repo + "/" + volume.full.replacingOccurrences(of: "/", with: "-") + "/" + (chains.first ?? "")
        let all = images(chain)
        #expect(all.count == 2 && all.last?.contains("-inc-") == true, "\(all)")
        for image in all { try QemuImg.check(image) }
        #expect(try QemuImg.identical(try #require(all.last), volume.path))
        #expect(try volume.snapshots().count == 1, "exactly the newest base should remain")
    }
}
}
