import ControlProtocol
import Foundation
import Testing
import TestSupport

/// Quiesce with fsfreeze (DESIGN §11) on real ext4 filesystems on loop
/// devices: the watchdog that never leaves a filesystem frozen, the hooks
/// around the freeze, and backups held frozen for their whole copy.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct QuiesceTests {
    /// A hooks folder with one script, `body` run for the phase named.
    static func hooks(in dir: TemporaryDirectory, phase: String, body: String) throws -> String {
        let hooks = dir.file("hooks.d")
        try FileManager.default.createDirectory(atPath: hooks, withIntermediateDirectories: true)
        let script = """
            #!/bin/sh
            echo "$RINGBACK_PHASE $RINGBACK_DEVICES $RINGBACK_MOUNTS" >> \(dir.file("hooks.log"))
            if [ "$RINGBACK_PHASE" = "\(phase)" ]; then
            \(body.isEmpty ? ":" : body)
            fi
            exit 0
            """
        try script.write(toFile: hooks + "/10-test", atomically: true, encoding: .utf8)
        chmod(hooks + "/10-test", 0o755)
        return hooks
    }

    @Test("kill -9 of ringbackd while frozen: the watchdog thaws at once")
    func daemonKilledWhileFrozen() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let marker = dir.file("frozen-hook-running")
        let hooks = try Self.hooks(in: dir, phase: "frozen", body: "touch \(marker); sleep 30")
        defer { _ = try? Shell.run(["pkill", "-f", "sleep 30"]) }
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", hooks, "--freeze-timeout", "20"])
        let watcher = try QMPSession(socket: daemon.socket)
        try watcher.execute("block-dirty-bitmap-add", qmpArgs(["node": fs.device.path, "name": "b0"]))
        // The transaction blocks inside the freeze (its hook sleeps): send it from another client.
        let args = JSONValue.object(qmpArgs(["actions": [action("block-dirty-bitmap-clear", ["node": fs.device.path, "name": "b0"])]]))
        let socket = daemon.socket
        let sender = Thread {
            _ = try? QMPClient(path: socket).execute("transaction", args.objectValue ?? [:])
        }
        sender.start()
        let frozen = try watcher.waitFor("X_FILESYSTEMS_FROZEN")
        #expect(frozen["data"]?["mount-points"]?.arrayValue?.first?.stringValue == fs.mountPoint)
        while !FileManager.default.fileExists(atPath: marker) { usleep(20_000) }
        #expect(!fs.writable(within: 0.5), "the filesystem should be frozen")
        daemon.kill()
        // Far sooner than the 20 s freeze timeout: the watchdog saw its pipe close.
        #expect(fs.writable(within: 5), "the filesystem stayed frozen after the daemon died")
        #expect(try Shell.run(["fsfreeze", "-u", fs.mountPoint]).succeeded == false, "it was already thawed")
    }

    @Test("a hook inside the freeze that outlasts the freeze timeout: thawed, transaction failed, nothing changed")
    func hookPastTheFreezeTimeout() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let hooks = try Self.hooks(in: dir, phase: "frozen", body: "sleep 3")
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", hooks, "--freeze-timeout", "1"])
        let qmp = try QMPSession(socket: daemon.socket)
        try qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": fs.device.path, "name": "b0"]))
        try Shell.check(["sh", "-c", "head -c 1048576 /dev/urandom > \(fs.mountPoint)/data && sync"])
        // A disabled copy: the freeze itself writes (ext4 commits its journal),
        // so only a bitmap that records nothing can show "unchanged" exactly.
        try qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": fs.device.path, "name": "b1", "disabled": true]))
        try qmp.execute("block-dirty-bitmap-merge", qmpArgs(["node": fs.device.path, "target": "b1", "bitmaps": ["b0"]]))
        let before = try qmp.count(fs.device.path, "b1")
        #expect((before ?? 0) > 0)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        let message = try qmp.error("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-clear", ["node": fs.device.path, "name": "b1"]),
            action("block-dirty-bitmap-enable", ["node": fs.device.path, "name": "b1"]),
            action("drive-backup", ["device": fs.device.path, "target": chain, "sync": "full", "job-id": "late"]),
        ]]))
        #expect(message.contains("ended (freeze timeout 1 s) before the transaction could commit; nothing was changed"), "\(message)")
        let thawed = try qmp.waitFor("X_FILESYSTEMS_THAWED")
        #expect(thawed["data"]?["expired"]?.boolValue == true)
        #expect(try qmp.count(fs.device.path, "b1") == before)
        #expect(try qmp.bitmap(fs.device.path, "b1")?["recording"]?.boolValue == false)
        #expect(fs.writable(within: 5))
        #expect(try qmp.execute("query-jobs").arrayValue?.isEmpty == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: chain).isEmpty)
    }

    @Test("a failing pre-freeze hook fails the transaction before anything is frozen")
    func failingPreFreezeHook() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let hooks = try Self.hooks(in: dir, phase: "pre-freeze", body: "echo 'database refused to flush' >&2; exit 3")
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", hooks])
        let qmp = try QMPSession(socket: daemon.socket)
        try qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": fs.device.path, "name": "b0"]))
        try Shell.check(["sh", "-c", "echo hello > \(fs.mountPoint)/f && sync"])
        let before = try qmp.count(fs.device.path, "b0")
        let message = try qmp.error("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-clear", ["node": fs.device.path, "name": "b0"]),
        ]]))
        #expect(message.contains("hook \(hooks)/10-test (pre-freeze) exited with status 3: database refused to flush"), "\(message)")
        #expect(!qmp.events.contains { $0["event"]?.stringValue == "X_FILESYSTEMS_FROZEN" })
        #expect(try qmp.count(fs.device.path, "b0") == before)
        // The post-thaw hooks still ran, so whatever pre-freeze began is undone.
        let log = try String(contentsOfFile: dir.file("hooks.log"), encoding: .utf8)
        #expect(log.contains("pre-freeze \(fs.device.path) \(fs.mountPoint)") && log.contains("post-thaw"), "\(log)")
    }

    @Test("x-consistency=frozen: the filesystem stays frozen for the copy; the image is clean and recorded frozen")
    func frozenBackup() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let hooks = try Self.hooks(in: dir, phase: "none", body: "")
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", hooks, "--freeze-timeout", "3"])
        let qmp = try QMPSession(socket: daemon.socket)
        for i in 0..<20 {
            try Shell.check(["sh", "-c", "head -c 200000 /dev/urandom > \(fs.mountPoint)/file\(i)"])
        }
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        // 16 MiB/s over 64 MiB: about four seconds, longer than the freeze
        // timeout, so the keep-alive must hold it.
        try qmp.execute("transaction", qmpArgs(["actions": [
            action("drive-backup", ["device": fs.device.path, "target": chain, "sync": "full", "job-id": "frozen",
                                    "x-consistency": "frozen", "speed": 16 << 20]),
        ]]))
        try qmp.waitForStatus("frozen", "running")
        #expect(!fs.writable(within: 0.5), "frozen during the copy")
        let end = try qmp.waitForEnd(of: "frozen")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        let thawed = try qmp.waitFor("X_FILESYSTEMS_THAWED")
        #expect(thawed["data"]?["expired"]?.boolValue == false)
        #expect((thawed["data"]?["seconds"]?.doubleValue ?? 0) > 3, "held past one freeze timeout by the keep-alive")
        #expect(fs.writable(within: 5))
        let image = try #require(try FileManager.default.contentsOfDirectory(atPath: chain).first { $0.hasSuffix(".qcow2") })
        let raw = dir.file("restored.raw")
        try Shell.check(["qemu-img", "convert", "-O", "raw", chain + "/" + image, raw])
        let fsck = try Shell.run(["e2fsck", "-fn", raw])
        #expect(fsck.succeeded, "\(fsck.stdout)\(fsck.stderr)")
        let record = try qmp.execute("x-query-backups").arrayValue?.first
        #expect(record?["consistency"]?.stringValue == "frozen")
    }

    @Test("converge without auto-complete: READY, standby on pause, job-complete runs the final freeze")
    func convergeWaitsForJobComplete() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", dir.file("no-hooks")])
        let qmp = try QMPSession(socket: daemon.socket)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        try Shell.check(["sh", "-c", "head -c 4000000 /dev/urandom > \(fs.mountPoint)/data && sync"])
        try qmp.execute("drive-backup", qmpArgs(["device": fs.device.path, "target": chain, "sync": "full", "job-id": "cv",
                                                 "x-consistency": "converge", "x-converge": ["threshold": 1 << 20]]))
        try qmp.waitFor("BLOCK_JOB_READY") { $0["device"]?.stringValue == "cv" }
        #expect(try qmp.execute("query-block-jobs").arrayValue?.first?["ready"]?.boolValue == true)
        // Writes while ready are caught up by later passes, not lost.
        try Shell.check(["sh", "-c", "head -c 3000000 /dev/urandom > \(fs.mountPoint)/late && sync"])
        try qmp.execute("job-pause", qmpArgs(["id": "cv"]))
        #expect(try qmp.job("cv")?["status"]?.stringValue == "standby")
        try qmp.execute("job-resume", qmpArgs(["id": "cv"]))
        #expect(try qmp.job("cv")?["status"]?.stringValue == "ready")
        #expect(!qmp.events.contains { $0["event"]?.stringValue == "X_CONVERGE_FROZEN" }, "no final freeze before job-complete")
        try qmp.execute("job-complete", qmpArgs(["id": "cv"]))
        let end = try qmp.waitForEnd(of: "cv")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        let converge = end["data"]?["x-summary"]?["converge"]
        #expect((converge?["passes"]?.intValue ?? 0) >= 2, "\(converge ?? .null)")
        #expect(qmp.statuses(of: "cv").starts(with: ["created", "running", "ready", "standby", "ready", "waiting"]))
        let image = try #require(try FileManager.default.contentsOfDirectory(atPath: chain).first { $0.hasSuffix(".qcow2") })
        let raw = dir.file("r.raw")
        try Shell.check(["qemu-img", "convert", "-O", "raw", chain + "/" + image, raw])
        let fsck = try Shell.run(["e2fsck", "-fn", raw])
        #expect(fsck.succeeded, "\(fsck.stdout)")
        let restored = try MountedImage(raw: raw, at: dir.file("restored"))
        #expect(try Shell.check(["cmp", fs.mountPoint + "/late", restored.mountPoint + "/late"]).isEmpty)
    }

    @Test("ringback backup --consistency frozen|none through the daemon, recorded as such")
    func cliConsistency() throws {
        let dir = try TemporaryDirectory()
        let fs = try MountedExt4(in: dir)
        let daemon = try DaemonProcess(in: dir, extraArguments: ["--hooks-dir", dir.file("no-hooks")])
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        for mode in ["frozen", "none"] {
            let r = try daemon.ringback(["backup", fs.device.path, "--sync", "full", "--consistency", mode, "--to", chain])
            #expect(r.succeeded, "\(r.stderr)")
        }
        let bad = try daemon.ringback(["backup", fs.device.path, "--sync", "full", "--consistency", "snapshot", "--to", chain])
        #expect(!bad.succeeded && bad.stderr.contains("Parameter 'x-consistency' does not accept value 'snapshot'"), "\(bad.stderr)")
        let list = try daemon.ringback(["list", "--json"])
        let records = try JSONValue.parse(Data(list.stdout.utf8)).arrayValue ?? []
        #expect(records.compactMap { $0["consistency"]?.stringValue } == ["frozen", "crash-inconsistent"])
    }
}
