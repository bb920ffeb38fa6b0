import ControlProtocol
import Foundation
import Testing
import TestSupport

/// The proof of DESIGN §11 on live filesystems: ext4 on loop devices written
/// to all through the backup by a writer of numbered, checksummed, fsynced
/// files. A `frozen` or `converge` backup, restored, must pass `e2fsck -fn`,
/// mount, hold an unbroken prefix of the writer's files with every checksum
/// right, and equal bit for bit the device as a hook saw it inside the
/// (final) freeze. Two filesystems in one grouped transaction share that point.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct PointInTimeTests {
    /// A hook that, inside every freeze, records the SHA-256 of each device (read with O_DIRECT).
    static func digestHook(in dir: TemporaryDirectory) throws -> (hooks: String, log: String) {
        let hooks = dir.file("hooks.d"), log = dir.file("digests.log")
        try FileManager.default.createDirectory(atPath: hooks, withIntermediateDirectories: true)
        let script = """
            #!/bin/sh
            [ "$RINGBACK_PHASE" = frozen ] || exit 0
            for d in $RINGBACK_DEVICES; do
                echo "$d $(dd if=$d iflag=direct bs=1M status=none | sha256sum | cut -d' ' -f1)" >> \(log)
            done
            """
        try script.write(toFile: hooks + "/50-digest", atomically: true, encoding: .utf8)
        chmod(hooks + "/50-digest", 0o755)
        return (hooks, log)
    }

    /// The digest the hook recorded last for `device`.
    static func lastDigest(_ log: String, _ device: String) throws -> String? {
        try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
            .map { $0.split(separator: " ") }.last { $0.first.map(String.init) == device }.map { String($0[1]) }
    }

    static func sha256(_ path: String) throws -> String {
        String(try Shell.check(["sha256sum", path]).prefix(64))
    }

    /// Restores the newest image of `chain` to a raw file and checks it: the
    /// hook's digest, e2fsck, then mounts it for the prefix check.
    static func restoredAndChecked(_ chain: String, device: String, log: String, dir: TemporaryDirectory,
                                   name: String) throws -> MountedImage {
        let image = try #require(try FileManager.default.contentsOfDirectory(atPath: chain).filter { $0.hasSuffix(".qcow2") }.sorted().last)
        _ = try QemuImg.check(chain + "/" + image)
        let raw = dir.file(name + ".raw")
        try Shell.check(["qemu-img", "convert", "-O", "raw", chain + "/" + image, raw])
        #expect(try sha256(raw) == lastDigest(log, device), "\(name): the restored image is not the device as frozen")
        let fsck = try Shell.run(["e2fsck", "-fn", raw])
        #expect(fsck.succeeded, "\(name): \(fsck.stdout)\(fsck.stderr)")
        return try MountedImage(raw: raw, at: dir.file(name + "-restored"))
    }

    static func backupArgs(_ device: String, _ chain: String, _ mode: String, id: String) -> JSONValue {
        var data: KeyValuePairs<String, Any> = [:]
        if mode == "converge" {
            data = ["device": device, "target": chain, "sync": "full", "job-id": id, "x-consistency": mode,
                    "auto-complete": true, "x-converge": ["threshold": 1 << 20, "max-passes": 6], "speed": 64 << 20]
        } else {
            data = ["device": device, "target": chain, "sync": "full", "job-id": id, "x-consistency": mode]
        }
        return action("drive-backup", data)
    }

    @Test("a live ext4 backed up frozen or converged restores to one point in time", arguments: ["frozen", "converge"])
    func liveFilesystem(mode: String) throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir, size: 128 << 20)
        let (hooks, log) = try Self.digestHook(in: dir)
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", hooks])
        let qmp = try QMPSession(socket: daemon.socket)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        let started = Date()
        let writer = try SequenceWriter(mounts: [fs.mountPoint])
        usleep(500_000)
        try qmp.execute("transaction", qmpArgs(["actions": [Self.backupArgs(fs.device.path, chain, mode, id: "pit")]]))
        let end = try qmp.waitForEnd(of: "pit")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        if mode == "converge" {
            #expect(qmp.events.contains { $0["event"]?.stringValue == "BLOCK_JOB_READY" })
            let final = try qmp.waitFor("X_CONVERGE_FROZEN")
            let seconds = final["data"]?["seconds"]?.doubleValue ?? -1
            print("converge: final freeze \(seconds) s, passes \(final["data"]?["passes"] ?? .null)")
            #expect(seconds >= 0 && final["data"]?["expired"]?.boolValue == false)
        }
        let written = writer.stop()
        print("\(mode): backup done \(Date().timeIntervalSince(started)) s after the writer started; \(written) files")
        #expect(written > 0)
        let restored = try Self.restoredAndChecked(chain, device: fs.device.path, log: log, dir: dir, name: "r")
        let (prefix, reason) = try SequenceWriter.check([restored.mountPoint])
        #expect(prefix != nil, "\(reason)")
        #expect((prefix ?? 0) > 0 && (prefix ?? 0) <= written, "prefix \(prefix ?? -1) of \(written)")
        let record = try qmp.execute("x-query-backups").arrayValue?.first
        #expect(record?["consistency"]?.stringValue == (mode == "frozen" ? "frozen" : "converged"))
    }

    @Test("two filesystems in one grouped transaction share one point in time", arguments: ["frozen", "converge"])
    func groupedPair(mode: String) throws {
        let dir = try TemporaryDirectory()
        let fsA = try MountedExt4(in: dir, name: "a", size: 96 << 20)
        let fsB = try MountedExt4(in: dir, name: "b", size: 96 << 20)
        let (hooks, log) = try Self.digestHook(in: dir)
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", hooks])
        let qmp = try QMPSession(socket: daemon.socket)
        let chains = [dir.file("chainA"), dir.file("chainB")]
        for c in chains { try FileManager.default.createDirectory(atPath: c, withIntermediateDirectories: true) }
        let writer = try SequenceWriter(mounts: [fsA.mountPoint, fsB.mountPoint])
        usleep(500_000)
        try qmp.execute("transaction", qmpArgs([
            "actions": [Self.backupArgs(fsA.device.path, chains[0], mode, id: "a"),
                        Self.backupArgs(fsB.device.path, chains[1], mode, id: "b")],
            "properties": ["completion-mode": "grouped"],
        ]))
        for id in ["a", "b"] {
            let end = try qmp.waitForEnd(of: id)
            #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        }
        if mode == "converge" {
            let finals = qmp.events.filter { $0["event"]?.stringValue == "X_CONVERGE_FROZEN" }
            #expect(finals.count == 1, "one final freeze for the group")
            #expect(Set(finals.first?["data"]?["jobs"]?.arrayValue?.compactMap(\.stringValue) ?? []) == ["a", "b"])
        }
        let written = writer.stop()
        let a = try Self.restoredAndChecked(chains[0], device: fsA.device.path, log: log, dir: dir, name: "ra")
        let b = try Self.restoredAndChecked(chains[1], device: fsB.device.path, log: log, dir: dir, name: "rb")
        let (prefix, reason) = try SequenceWriter.check([a.mountPoint, b.mountPoint])
        #expect(prefix != nil, "the pair does not hold one prefix: \(reason)")
        #expect((prefix ?? 0) > 1 && (prefix ?? 0) <= written)
    }
}
