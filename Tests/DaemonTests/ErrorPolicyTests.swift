import ControlProtocol
import Foundation
import Testing
import TestSupport

/// Error policies and grouped completion with real kernel I/O errors: the
/// source is a loop device over a FUSE file that fails reads of a chosen range
/// with EIO (FaultyLoopDevice), the ENOSPC target a tiny tmpfs.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct ErrorPolicyTests {
    typealias Write = QemuIncrementalScenario.Write
    /// A 64 KiB stretch inside set A's 256 KiB write at 16 MiB: read by every incremental of set A.
    static let faultOffset: UInt64 = (16 << 20) + (128 << 10)

    static func apply(_ writes: [Write], to device: FaultyLoopDevice) throws {
        for w in writes { try device.write([UInt8](repeating: w.pattern, count: w.length), at: w.offset) }
    }

    static func qcow2s(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".qcow2") }.sorted()
            .map { dir + "/" + $0 }
    }

    /// A daemon and a faulty device prepared as `prepared` says.
    final class Rig: @unchecked Sendable {
        let dir: TemporaryDirectory
        let device: FaultyLoopDevice
        let daemon: DaemonProcess
        let qmp: QMPSession
        let chain: String
        init() throws {
            dir = try TemporaryDirectory()
            device = try FaultyLoopDevice(size: 64 << 20, fill: .random)
            daemon = try DaemonProcess(in: dir)
            qmp = try QMPSession(socket: daemon.socket)
            chain = dir.file("chain")
            try ErrorPolicyTests.prepared(qmp, device, chain: chain, id: "full")
        }
    }

    /// A faulty device with bitmap b0, a full backup in `chain`, then set A written.
    static func prepared(_ qmp: QMPSession, _ device: FaultyLoopDevice, chain: String, id: String) throws {
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        try qmp.execute("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-add", ["node": device.path, "name": "b0"]),
            action("drive-backup", ["device": device.path, "target": chain, "sync": "full", "job-id": id]),
        ]]))
        let end = try qmp.waitForEnd(of: id)
        guard end["event"]?.stringValue == "BLOCK_JOB_COMPLETED", end["data"]?["error"] == nil else {
            throw CommandError("full backup of \(device.path) failed: \(end)")
        }
        try apply(QemuIncrementalScenario.setA, to: device)
    }

    @Test("QEMU 124: a grouped transaction of two devices where the second hits EIO, then the same again")
    func groupedTransactionWithAReadError() throws {
        let dir = try TemporaryDirectory()
        let first = try FaultyLoopDevice(size: 64 << 20, fill: .random)
        let second = try FaultyLoopDevice(size: 64 << 20, fill: .random)
        defer { first.detach(); second.detach() }
        let daemon = try DaemonProcess(in: dir)
        let qmp = try QMPSession(socket: daemon.socket)
        let chains = [dir.file("chain0"), dir.file("chain1")]
        try Self.prepared(qmp, first, chain: chains[0], id: "full0")
        try Self.prepared(qmp, second, chain: chains[1], id: "full1")
        let counts = [try qmp.count(first.path, "b0"), try qmp.count(second.path, "b0")]
        #expect(counts == [458_752, 458_752])
        try second.failReads(offset: Self.faultOffset, length: 64 << 10, mode: .always)

        func transaction(_ round: Int) throws {
            try qmp.execute("transaction", qmpArgs([
                "actions": [
                    action("drive-backup", ["device": first.path, "target": chains[0], "sync": "incremental",
                                            "bitmap": "b0", "job-id": "inc0-\(round)"]),
                    action("drive-backup", ["device": second.path, "target": chains[1], "sync": "incremental",
                                            "bitmap": "b0", "job-id": "inc1-\(round)"]),
                ],
                "properties": ["completion-mode": "grouped"],
            ]))
        }
        try transaction(0)
        let failed = try qmp.waitForEnd(of: "inc1-0")
        #expect(failed["event"]?.stringValue == "BLOCK_JOB_COMPLETED")
        #expect(failed["data"]?["error"]?.stringValue?.contains("Input/output error") == true, "\(failed)")
        let error = try qmp.waitFor("BLOCK_JOB_ERROR") { $0["device"]?.stringValue == "inc1-0" }
        #expect(error["data"]?["operation"]?.stringValue == "read")
        #expect(error["data"]?["action"]?.stringValue == "report")
        #expect(try qmp.waitForEnd(of: "inc0-0")["event"]?.stringValue == "BLOCK_JOB_CANCELLED")
        #expect(try second.injectedFailures.reads > 0)
        #expect([try qmp.count(first.path, "b0"), try qmp.count(second.path, "b0")] == counts)
        #expect(Self.qcow2s(chains[0]).count == 1 && Self.qcow2s(chains[1]).count == 1, "a failed group leaves no image")
        #expect(!((try FileManager.default.contentsOfDirectory(atPath: chains[0])) + (try FileManager.default.contentsOfDirectory(atPath: chains[1])))
            .contains { $0.contains(".partial") })

        // The catalog never calls the failed group restorable.
        let records = try qmp.execute("x-query-backups", qmpArgs(["all": true])).arrayValue ?? []
        let failedRound = records.filter { ($0["job-id"]?.stringValue ?? "").hasSuffix("-0") }
        #expect(Set(failedRound.compactMap { $0["status"]?.stringValue }) == ["failed", "cancelled"])
        #expect(failedRound.allSatisfy { $0["restorable"]?.boolValue == false })

        try second.clearFaults()
        try transaction(1)
        for id in ["inc0-1", "inc1-1"] {
            let end = try qmp.waitForEnd(of: id)
            #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        }
        #expect([try qmp.count(first.path, "b0"), try qmp.count(second.path, "b0")] == [0, 0])
        for (chain, device) in zip(chains, [first.path, second.path]) {
            let images = Self.qcow2s(chain)
            #expect(images.count == 2)
            for image in images { _ = try QemuImg.check(image) }
            #expect(try QemuImg.identical(images.last!, device))
        }
    }

    @Test("QEMU 124: on-source-error=stop pauses with the bitmap busy; job-resume completes it")
    func stopOnSourceErrorThenResume() throws {
        let rig = try Rig()
        defer { rig.device.detach() }
        let (device, qmp, chain) = (rig.device, rig.qmp, rig.chain)
        try device.failReads(offset: Self.faultOffset, length: 64 << 10, mode: .always)
        try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": chain, "sync": "incremental",
                                                 "bitmap": "b0", "job-id": "inc", "on-source-error": "stop"]))
        let error = try qmp.waitFor("BLOCK_JOB_ERROR") { $0["device"]?.stringValue == "inc" }
        #expect(error["data"]?["operation"]?.stringValue == "read" && error["data"]?["action"]?.stringValue == "stop")
        try qmp.waitForStatus("inc", "paused")
        let info = try #require(try qmp.execute("query-block-jobs").arrayValue?.first)
        #expect(info["paused"]?.boolValue == true && info["io-status"]?.stringValue == "failed", "\(info)")
        #expect(try qmp.bitmap(device.path, "b0")?["busy"]?.boolValue == true)
        #expect(try qmp.error("block-dirty-bitmap-remove", qmpArgs(["node": device.path, "name": "b0"]))
                == "Bitmap 'b0' is currently in use by another operation and cannot be used")
        // Still stopped a moment later: the error holds the job, nothing retries behind our back.
        let failures = try device.injectedFailures.reads
        usleep(300_000)
        #expect(try device.injectedFailures.reads == failures)
        #expect(try qmp.job("inc")?["status"]?.stringValue == "paused")

        try device.clearFaults()
        try qmp.execute("job-resume", qmpArgs(["id": "inc"]))
        let end = try qmp.waitForEnd(of: "inc")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        #expect(try qmp.count(device.path, "b0") == 0)
        #expect(try qmp.bitmap(device.path, "b0")?["busy"]?.boolValue == false)
        let images = Self.qcow2s(chain)
        #expect(images.count == 2)
        #expect(try QemuImg.identical(images.last!, device.path))
    }

    @Test("ignore retries a read that fails once; report fails the job; enospc reports an EIO")
    func ignoreReportAndEnospcOnReadErrors() throws {
        let rig = try Rig()
        defer { rig.device.detach() }
        let (device, qmp, chain) = (rig.device, rig.qmp, rig.chain)

        for (policy, mode, succeeds) in [("ignore", FaultyLoopDevice.Mode.once, true), ("enospc", .always, false),
                                         ("report", .always, false)] {
            let id = "inc-\(policy)"
            let before = try qmp.count(device.path, "b0")
            // At the start of the extent's read: a fault in its middle makes the
            // loop driver see a short read and retry the rest, which a `once`
            // fault would then let through.
            try device.failReads(offset: 16 << 20, length: 64 << 10, mode: mode)
            try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": chain, "sync": "incremental",
                                                     "bitmap": "b0", "job-id": id, "on-source-error": policy]))
            let end = try qmp.waitForEnd(of: id)
            let error = try qmp.waitFor("BLOCK_JOB_ERROR") { $0["device"]?.stringValue == id }
            #expect(error["data"]?["action"]?.stringValue == (policy == "ignore" ? "ignore" : "report"))
            #expect((end["data"]?["error"] == nil) == succeeds, "\(policy): \(end)")
            #expect(try qmp.count(device.path, "b0") == (succeeds ? 0 : before), "\(policy)")
            try device.clearFaults()
            if !succeeds { #expect(Self.qcow2s(chain).count == 2, "\(policy) left an image") }
            try device.write([UInt8](repeating: 0x31, count: 64 << 10), at: 16 << 20)
        }
        let images = Self.qcow2s(chain)
        #expect(images.count == 2)
        for image in images { _ = try QemuImg.check(image) }
    }

    @Test("on-target-error=enospc: a full target stops the job; room made, job-resume completes it")
    func enospcOnTheTargetStopsUntilThereIsRoom() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path, fill: .random)
        let daemon = try DaemonProcess(in: dir)
        let qmp = try QMPSession(socket: daemon.socket)
        let small = dir.file("small")
        try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
        try Shell.check(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", small])
        defer { _ = try? Shell.run(["umount", "-l", small]) }
        try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": small, "sync": "full",
                                                 "job-id": "big", "on-target-error": "enospc"]))
        let error = try qmp.waitFor("BLOCK_JOB_ERROR") { $0["device"]?.stringValue == "big" }
        #expect(error["data"]?["operation"]?.stringValue == "write" && error["data"]?["action"]?.stringValue == "stop")
        try qmp.waitForStatus("big", "paused")
        #expect(try qmp.execute("query-block-jobs").arrayValue?.first?["io-status"]?.stringValue == "nospace")
        try Shell.check(["mount", "-o", "remount,size=64m", small])
        try qmp.execute("job-resume", qmpArgs(["id": "big"]))
        let end = try qmp.waitForEnd(of: "big")
        #expect(end["event"]?.stringValue == "BLOCK_JOB_COMPLETED" && end["data"]?["error"] == nil, "\(end)")
        let images = Self.qcow2s(small)
        #expect(images.count == 1)
        if let image = images.first {
            _ = try QemuImg.check(image)
            #expect(try QemuImg.identical(image, device.path))
        }
    }
}
