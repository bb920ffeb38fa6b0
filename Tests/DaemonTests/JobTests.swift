import ControlProtocol
import Foundation
import Testing
import TestSupport

/// The job model end to end (DESIGN §9): a real ringbackd, real loop devices,
/// the events a QMP client sees, and what each verb does in each status.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct JobTests {
    /// A daemon, a 64 MiB random-filled loop device and a chain folder.
    final class Rig: @unchecked Sendable {
        let dir: TemporaryDirectory
        let device: LoopDevice
        let daemon: DaemonProcess
        let qmp: QMPSession
        let chain: String
        init(size: UInt64 = 64 << 20) throws {
            dir = try TemporaryDirectory()
            device = try LoopDevice(size: size, in: dir.path, fill: .random)
            daemon = try DaemonProcess(in: dir)
            qmp = try QMPSession(socket: daemon.socket)
            chain = dir.file("chain")
            try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        }
        var files: [String] { (try? FileManager.default.contentsOfDirectory(atPath: chain))?.sorted() ?? [] }
        var images: [String] { files.filter { $0.hasSuffix(".qcow2") }.map { chain + "/" + $0 } }
    }

    @Test("a successful job: every status and event in QEMU's order, then dismiss")
    func lifeCycleOfASuccessfulJob() throws {
        let rig = try Rig()
        let other = try QMPSession(socket: rig.daemon.socket)
        try rig.qmp.execute("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-add", ["node": rig.device.path, "name": "b0"]),
            action("drive-backup", ["device": rig.device.path, "target": rig.chain, "sync": "full", "job-id": "j0",
                                    "bitmap": "b0", "bitmap-mode": "on-success", "auto-dismiss": false]),
        ]]))
        let done = try rig.qmp.waitForEnd(of: "j0")
        #expect(done["event"]?.stringValue == "BLOCK_JOB_COMPLETED")
        #expect(done["data"]?["error"] == nil)
        #expect(done["data"]?["type"]?.stringValue == "backup")
        #expect(done["data"]?["len"]?.intValue == 64 << 20 && done["data"]?["offset"]?.intValue == 64 << 20)
        #expect(done["timestamp"]?["seconds"]?.intValue != nil && done["timestamp"]?["microseconds"]?.intValue != nil)
        try rig.qmp.waitForStatus("j0", "concluded")
        #expect(rig.qmp.statuses(of: "j0") == ["created", "running", "waiting", "pending", "concluded"])
        let names = rig.qmp.eventNames(of: "j0").filter { $0 != "JOB_STATUS_CHANGE" }
        #expect(names == ["BLOCK_JOB_PENDING", "BLOCK_JOB_COMPLETED"])

        let info = try #require(try rig.qmp.job("j0"))
        #expect(info["status"]?.stringValue == "concluded")
        #expect(info["current-progress"] == info["total-progress"])
        #expect(try rig.qmp.error("job-pause", qmpArgs(["id": "j0"]))
                == "Job 'j0' in state 'concluded' cannot accept command verb 'pause'")
        // The id stays reserved until dismissed.
        #expect(try rig.qmp.error("drive-backup", qmpArgs(["device": rig.device.path, "target": rig.dir.file("x.qcow2"),
                                                             "sync": "full", "job-id": "j0"])) == "Job ID 'j0' already in use")
        try rig.qmp.execute("job-dismiss", qmpArgs(["id": "j0"]))
        #expect(rig.qmp.statuses(of: "j0").last == "null")
        #expect(try rig.qmp.job("j0") == nil)
        #expect(try rig.qmp.count(rig.device.path, "b0") == 0)
        #expect(rig.images.count == 1)
        #expect(try QemuImg.identical(rig.images[0], rig.device.path))
        // Every client gets the events, not only the one that asked.
        try other.waitForStatus("j0", "null")
        #expect(other.statuses(of: "j0") == ["created", "running", "waiting", "pending", "concluded", "null"])

        // x-verify and x-restore through the daemon.
        let verified = try rig.qmp.execute("x-verify", qmpArgs(["image": rig.images[0]]))
        #expect(verified["ok"]?.boolValue == true, "\(verified)")
        let target = try LoopDevice(size: 64 << 20, in: rig.dir.path, name: "restore.img")
        try rig.qmp.execute("x-restore", qmpArgs(["image": rig.images[0], "target": target.path]))
        #expect(try QemuImg.identical(rig.images[0], target.path))
        #expect(try rig.qmp.error("x-restore", qmpArgs(["image": rig.dir.file("none.qcow2"), "target": target.path]))
                .contains("none.qcow2"))
    }

    @Test("auto-finalize=false: the job waits in pending, its image unpublished, until job-finalize")
    func manualFinalize() throws {
        let rig = try Rig()
        try rig.qmp.execute("drive-backup", qmpArgs(["device": rig.device.path, "target": rig.chain, "sync": "full",
                                                     "job-id": "j1", "auto-finalize": false]))
        try rig.qmp.waitFor("BLOCK_JOB_PENDING") { $0["id"]?.stringValue == "j1" }
        #expect(try rig.qmp.job("j1")?["status"]?.stringValue == "pending")
        #expect(rig.images.isEmpty, "a pending job's image must not look restorable: \(rig.files)")
        #expect(rig.files.contains { $0.hasSuffix(".qcow2.partial") })
        for verb in ["job-dismiss", "job-complete", "job-pause", "job-resume"] {
            let status = "pending", v = verb.replacingOccurrences(of: "job-", with: "")
            #expect(try rig.qmp.error(verb, qmpArgs(["id": "j1"])) == "Job 'j1' in state '\(status)' cannot accept command verb '\(v)'")
        }
        try rig.qmp.execute("job-finalize", qmpArgs(["id": "j1"]))
        let done = try rig.qmp.waitForEnd(of: "j1")
        #expect(done["event"]?.stringValue == "BLOCK_JOB_COMPLETED")
        #expect(rig.images.count == 1)
        #expect(!rig.files.contains { $0.hasSuffix(".partial") })
        #expect(try QemuImg.identical(rig.images[0], rig.device.path))
        #expect(try rig.qmp.job("j1") == nil, "auto-dismiss defaults to true")
    }

    @Test("pause holds progress still; set-speed, resume, and the verbs a running job refuses")
    func pauseResumeAndSpeed() throws {
        let rig = try Rig()
        // 4 MiB/s on 64 MiB: long enough to steer.
        try rig.qmp.execute("drive-backup", qmpArgs(["device": rig.device.path, "target": rig.chain, "sync": "full",
                                                     "job-id": "j2", "speed": 4 << 20]))
        try rig.qmp.waitForStatus("j2", "running")
        #expect(try rig.qmp.error("job-finalize", qmpArgs(["id": "j2"]))
                == "Job 'j2' in state 'running' cannot accept command verb 'finalize'")
        #expect(try rig.qmp.error("job-dismiss", qmpArgs(["id": "j2"]))
                == "Job 'j2' in state 'running' cannot accept command verb 'dismiss'")
        #expect(try rig.qmp.error("job-complete", qmpArgs(["id": "j2"]))
                == "Job 'j2' in state 'running' cannot accept command verb 'complete'")
        #expect(try rig.qmp.error("job-resume", qmpArgs(["id": "j2"])) == "Can't resume a job that was not paused")
        #expect(try rig.qmp.error("job-pause", qmpArgs(["id": "nope"])) == "Job 'nope' not found")

        try rig.qmp.execute("job-pause", qmpArgs(["id": "j2"]))
        #expect(try rig.qmp.job("j2")?["status"]?.stringValue == "paused")
        #expect(try rig.qmp.error("job-pause", qmpArgs(["id": "j2"])) == "Job 'j2' is already paused")
        let first = try rig.qmp.job("j2")?["current-progress"]?.intValue
        usleep(600_000)
        let second = try rig.qmp.job("j2")?["current-progress"]?.intValue
        #expect(first == second, "progress moved while paused")
        #expect(try rig.qmp.execute("query-block-jobs").arrayValue?.first?["paused"]?.boolValue == true)
        #expect(first ?? 0 < 64 << 20)

        try rig.qmp.execute("block-job-set-speed", qmpArgs(["device": "j2", "speed": 0]))
        #expect(try rig.qmp.error("block-job-set-speed", qmpArgs(["device": "j2", "speed": -1]))
                == "Parameter 'speed' expects a non-negative value")
        try rig.qmp.execute("job-resume", qmpArgs(["id": "j2"]))
        let done = try rig.qmp.waitForEnd(of: "j2")
        #expect(done["event"]?.stringValue == "BLOCK_JOB_COMPLETED")
        try rig.qmp.waitForStatus("j2", "null")
        #expect(rig.qmp.statuses(of: "j2") == ["created", "running", "paused", "running", "waiting", "pending", "concluded", "null"])
        #expect(try QemuImg.identical(rig.images[0], rig.device.path))
    }

    @Test("cancel: BLOCK_JOB_CANCELLED, no image, the bitmap as before")
    func cancelRunningJob() throws {
        let rig = try Rig()
        try rig.qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": rig.device.path, "name": "b0"]))
        try rig.device.write([UInt8](repeating: 7, count: 1 << 20), at: 3 << 20)
        let before = try rig.qmp.count(rig.device.path, "b0")
        #expect(before == 1 << 20)
        try rig.qmp.execute("drive-backup", qmpArgs(["device": rig.device.path, "target": rig.chain, "sync": "full",
                                                     "job-id": "j3", "speed": 2 << 20, "bitmap": "b0",
                                                     "bitmap-mode": "on-success"]))
        try rig.qmp.waitForStatus("j3", "running")
        #expect(try rig.qmp.bitmap(rig.device.path, "b0")?["busy"]?.boolValue == true)
        #expect(try rig.qmp.error("block-dirty-bitmap-clear", qmpArgs(["node": rig.device.path, "name": "b0"]))
                == "Bitmap 'b0' is currently in use by another operation and cannot be used")
        try rig.qmp.execute("job-cancel", qmpArgs(["id": "j3"]))
        let end = try rig.qmp.waitForEnd(of: "j3")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_CANCELLED")
        try rig.qmp.waitForStatus("j3", "null")
        #expect(rig.qmp.statuses(of: "j3") == ["created", "running", "aborting", "concluded", "null"])
        #expect(rig.files.isEmpty, "a cancelled job leaves nothing: \(rig.files)")
        #expect(try rig.qmp.count(rig.device.path, "b0") == before)
        #expect(try rig.qmp.bitmap(rig.device.path, "b0")?["busy"]?.boolValue == false)
    }

    @Test("an abort action: the error, no job, every bitmap as before")
    func abortActionChangesNothing() throws {
        let rig = try Rig()
        try rig.qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": rig.device.path, "name": "b0"]))
        try rig.qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": rig.device.path, "name": "b2", "disabled": true]))
        try rig.device.write([UInt8](repeating: 9, count: 256 << 10), at: 8 << 20)
        let before = try rig.qmp.count(rig.device.path, "b0")
        let message = try rig.qmp.error("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-add", ["node": rig.device.path, "name": "b1"]),
            action("block-dirty-bitmap-clear", ["node": rig.device.path, "name": "b0"]),
            action("block-dirty-bitmap-enable", ["node": rig.device.path, "name": "b2"]),
            action("block-dirty-bitmap-merge", ["node": rig.device.path, "target": "b2", "bitmaps": ["b0"]]),
            action("drive-backup", ["device": rig.device.path, "target": rig.chain, "sync": "full", "job-id": "j4",
                                    "bitmap": "b0", "bitmap-mode": "always"]),
            action("abort", [:]),
        ]]))
        #expect(message == "Transaction aborted using Abort action")
        #expect(try rig.qmp.execute("query-jobs").arrayValue?.isEmpty == true)
        #expect(rig.qmp.statuses(of: "j4") == ["created", "null"])
        #expect(try rig.qmp.bitmap(rig.device.path, "b1") == nil)
        #expect(try rig.qmp.count(rig.device.path, "b0") == before)
        let b2 = try rig.qmp.bitmap(rig.device.path, "b2")
        #expect(b2?["recording"]?.boolValue == false && b2?["count"]?.intValue == 0)
        #expect(try rig.qmp.bitmap(rig.device.path, "b0")?["busy"]?.boolValue == false)
        #expect(rig.files.isEmpty)
        // A failing action in the middle undoes the ones before it too.
        let second = try rig.qmp.error("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-clear", ["node": rig.device.path, "name": "b0"]),
            action("block-dirty-bitmap-add", ["node": rig.device.path, "name": "b0"]),
        ]]))
        #expect(second.contains("b0") && second.contains("already"), "\(second)")
        #expect(try rig.qmp.count(rig.device.path, "b0") == before)
        // Grouped mode takes only backups.
        #expect(try rig.qmp.error("transaction", qmpArgs([
            "actions": [action("block-dirty-bitmap-clear", ["node": rig.device.path, "name": "b0"])],
            "properties": ["completion-mode": "grouped"],
        ])) == "Action 'block-dirty-bitmap-clear' does not support Transaction property completion-mode = grouped")
    }

    @Test("QEMU 124: clear two bitmaps and take a full backup in one transaction; incrementals from both are valid")
    func clearTwoBitmapsWithAFullBackup() throws {
        let rig = try Rig()
        let dev = rig.device.path
        let chainB = rig.dir.file("chainB")
        try FileManager.default.createDirectory(atPath: chainB, withIntermediateDirectories: true)
        for name in ["b0", "b1"] {
            try rig.qmp.execute("block-dirty-bitmap-add", qmpArgs(["node": dev, "name": name]))
        }
        try QemuIncrementalScenario.apply(QemuIncrementalScenario.prefill, to: rig.device)
        #expect(try rig.qmp.count(dev, "b0") ?? 0 > 0)
        try rig.qmp.execute("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-clear", ["node": dev, "name": "b0"]),
            action("block-dirty-bitmap-clear", ["node": dev, "name": "b1"]),
            action("drive-backup", ["device": dev, "target": rig.chain, "sync": "full", "job-id": "full"]),
        ]]))
        #expect(try rig.qmp.waitForEnd(of: "full")["event"]?.stringValue == "BLOCK_JOB_COMPLETED")
        #expect(try rig.qmp.count(dev, "b0") == 0 && rig.qmp.count(dev, "b1") == 0)
        // Chain B starts from the same full backup.
        let full = rig.images[0]
        for suffix in ["", ".digests"] {
            try FileManager.default.copyItem(atPath: full + suffix,
                                             toPath: chainB + "/" + (full as NSString).lastPathComponent + suffix)
        }
        for (round, writes) in [QemuIncrementalScenario.setA, QemuIncrementalScenario.setB].enumerated() {
            try QemuIncrementalScenario.apply(writes, to: rig.device)
            let a = "inc-a\(round)", b = "inc-b\(round)"
            try rig.qmp.execute("transaction", qmpArgs(["actions": [
                action("drive-backup", ["device": dev, "target": rig.chain, "sync": "incremental", "bitmap": "b0", "job-id": a]),
                action("drive-backup", ["device": dev, "target": chainB, "sync": "incremental", "bitmap": "b1", "job-id": b]),
            ]]))
            for id in [a, b] {
                let end = try rig.qmp.waitForEnd(of: id)
                #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
            }
            for chain in [rig.chain, chainB] {
                let images = ((try? FileManager.default.contentsOfDirectory(atPath: chain)) ?? [])
                    .filter { $0.hasSuffix(".qcow2") }.sorted().map { chain + "/" + $0 }
                #expect(images.count == round + 2)
                for image in images { _ = try QemuImg.check(image) }
                #expect(try QemuImg.identical(images.last!, dev), "round \(round): \(chain) differs from the device")
            }
            #expect(try rig.qmp.count(dev, "b0") == 0 && rig.qmp.count(dev, "b1") == 0)
        }
    }

    @Test("bad transactions and drive-backup arguments get QEMU's errors")
    func badArguments() throws {
        let rig = try Rig()
        let dev = rig.device.path
        #expect(try rig.qmp.error("transaction", qmpArgs(["actions": [action("no-such-action", [:])]]))
                == "Parameter 'type' does not accept value 'no-such-action'")
        #expect(try rig.qmp.error("transaction", qmpArgs(["actions": ["x"]])) == "Invalid parameter type for 'actions[0]', expected: object")
        #expect(try rig.qmp.error("transaction", qmpArgs(["actions": [], "properties": ["completion-mode": "all"]]))
                == "Parameter 'completion-mode' does not accept value 'all' (individual or grouped)")
        #expect(try rig.qmp.error("drive-backup", qmpArgs(["device": dev, "target": rig.chain, "sync": "full", "bogus": 1]))
                == "Parameter 'bogus' is unexpected")
        #expect(try rig.qmp.error("drive-backup", qmpArgs(["device": dev, "target": rig.chain, "sync": "full",
                                                             "on-source-error": "explode"]))
                == "Parameter 'on-source-error' does not accept value 'explode' (report, ignore, stop or enospc)")
        #expect(try rig.qmp.error("drive-backup", qmpArgs(["device": dev, "target": dev, "sync": "full", "format": "raw"]))
                .hasPrefix("Source and target cannot be the same"))
        #expect(try rig.qmp.execute("query-jobs").arrayValue?.isEmpty == true)
    }

    @Test("the CLI: ringback transaction FILE, jobs, job pause|resume|cancel, and a refused verb")
    func cli() throws {
        let rig = try Rig()
        let file = rig.dir.file("tx.json")
        let tx = JSONValue.object(["actions": .array([
            action("block-dirty-bitmap-add", ["node": rig.device.path, "name": "nightly"]),
            action("drive-backup", ["device": rig.device.path, "target": rig.chain, "sync": "full", "job-id": "cli-full"]),
        ])])
        try tx.description.write(toFile: file, atomically: true, encoding: .utf8)
        var r = try rig.daemon.ringback(["transaction", file])
        #expect(r.succeeded, "\(r.stderr)")
        #expect(r.stdout.contains("job 'cli-full' completed: \(rig.chain)/"), "\(r.stdout)")
        #expect(try rig.qmp.bitmap(rig.device.path, "nightly") != nil)

        // A slow one, steered from the CLI.
        let slow = JSONValue.array([
            action("drive-backup", ["device": rig.device.path, "target": rig.chain, "sync": "incremental",
                                    "bitmap": "nightly", "job-id": "cli-inc", "speed": 1 << 16]),
        ])
        try rig.device.write([UInt8](repeating: 5, count: 4 << 20), at: 20 << 20)
        try slow.description.write(toFile: file, atomically: true, encoding: .utf8)
        r = try rig.daemon.ringback(["transaction", file, "--no-wait"])
        #expect(r.succeeded && r.stdout.contains("cli-inc"), "\(r.stdout)\(r.stderr)")
        r = try rig.daemon.ringback(["jobs"])
        #expect(r.succeeded && r.stdout.contains("cli-inc") && r.stdout.contains("running"), "\(r.stdout)")
        r = try rig.daemon.ringback(["job", "pause", "cli-inc"])
        #expect(r.succeeded, "\(r.stderr)")
        r = try rig.daemon.ringback(["jobs", "--json"])
        #expect(try JSONValue.parse(Data(r.stdout.utf8)).arrayValue?.first?["status"]?.stringValue == "paused")
        r = try rig.daemon.ringback(["job", "finalize", "cli-inc"])
        #expect(!r.succeeded && r.stderr.contains("Job 'cli-inc' in state 'paused' cannot accept command verb 'finalize'"),
                "\(r.stderr)")
        #expect(try rig.daemon.ringback(["job", "resume", "cli-inc"]).succeeded)
        #expect(try rig.daemon.ringback(["job", "cancel", "cli-inc"]).succeeded)
        let end = try rig.qmp.waitForEnd(of: "cli-inc")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_CANCELLED")
        #expect(try rig.qmp.count(rig.device.path, "nightly") == 4 << 20)
        r = try rig.daemon.ringback(["qmp", "query-jobs"])
        #expect(r.succeeded && r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "\(r.stdout)")
    }
}
