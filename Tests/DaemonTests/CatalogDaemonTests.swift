import ControlProtocol
import Foundation
import Testing
import TestSupport

/// The catalog as ringbackd keeps it: what `ringback list` and `show` report
/// after backups that complete, fail, are cancelled, or are cut off by a
/// daemon killed mid-copy.
@Suite(.enabled(if: TestEnvironment.canUseLoopDevices, Comment(rawValue: TestEnvironment.loopSkipReason)),
       .serialized)
struct CatalogDaemonTests {
    func list(_ daemon: DaemonProcess, all: Bool = true) throws -> [JSONValue] {
        let r = try daemon.ringback(["list", "--json"] + (all ? ["--all"] : []))
        #expect(r.succeeded, "\(r.stderr)")
        return try JSONValue.parse(Data(r.stdout.utf8)).arrayValue ?? []
    }

    @Test("complete backups are listed restorable with digests and parents; a cancelled one never")
    func listAndShow() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path, fill: .random)
        let daemon = try DaemonProcess(in: dir)
        let qmp = try QMPSession(socket: daemon.socket)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        try qmp.execute("transaction", qmpArgs(["actions": [
            action("block-dirty-bitmap-add", ["node": device.path, "name": "b0"]),
            action("drive-backup", ["device": device.path, "target": chain, "sync": "full", "job-id": "full"]),
        ]]))
        try qmp.waitForEnd(of: "full")
        try device.write([UInt8](repeating: 1, count: 1 << 20), at: 4 << 20)
        try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": chain, "sync": "incremental",
                                                 "bitmap": "b0", "job-id": "inc"]))
        try qmp.waitForEnd(of: "inc")
        try device.write([UInt8](repeating: 2, count: 1 << 20), at: 8 << 20)
        try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": chain, "sync": "incremental",
                                                 "bitmap": "b0", "job-id": "cancelled", "speed": 1 << 16]))
        try qmp.waitForStatus("cancelled", "running")
        try qmp.execute("job-cancel", qmpArgs(["id": "cancelled"]))
        try qmp.waitForEnd(of: "cancelled")

        let records = try list(daemon)
        #expect(records.count == 3)
        let byJob = Dictionary(uniqueKeysWithValues: records.map { ($0["job-id"]?.stringValue ?? "", $0) })
        let full = try #require(byJob["full"]), inc = try #require(byJob["inc"]), cancelled = try #require(byJob["cancelled"])
        #expect(full["status"]?.stringValue == "complete" && full["restorable"]?.boolValue == true)
        #expect(full["kind"]?.stringValue == "full" && full["device"]?.stringValue == device.path)
        #expect(inc["status"]?.stringValue == "complete" && inc["restorable"]?.boolValue == true)
        #expect(inc["parent"] == full["id"], "the incremental names its parent")
        #expect(inc["bitmap"]?.stringValue == "b0" && inc["sync"]?.stringValue == "incremental")
        #expect(full["image-digest"]?.stringValue?.count == 32 && inc["image-digest"]?.stringValue?.count == 32)
        #expect(full["image-digest"] != inc["image-digest"])
        #expect(full["consistency"]?.stringValue == "crash-inconsistent")
        #expect(cancelled["status"]?.stringValue == "cancelled" && cancelled["restorable"]?.boolValue == false)
        #expect(!FileManager.default.fileExists(atPath: cancelled["image"]?.stringValue ?? "/"))
        for record in [full, inc] {
            #expect(FileManager.default.fileExists(atPath: record["image"]?.stringValue ?? ""))
            #expect((record["bytes-read"]?.intValue ?? 0) > 0)
        }

        let show = try daemon.ringback(["show", inc["id"]?.stringValue ?? ""])
        #expect(show.succeeded && show.stdout.contains("complete") && show.stdout.contains(inc["image"]?.stringValue ?? "?"),
                "\(show.stdout)\(show.stderr)")
        let missing = try daemon.ringback(["show", "b-999"])
        #expect(!missing.succeeded && missing.stderr.contains("Backup 'b-999' not found"), "\(missing.stderr)")
        let table = try daemon.ringback(["list", "--all"])
        #expect(table.succeeded && table.stdout.contains("cancelled"), "\(table.stdout)")
    }

    @Test("a daemon killed mid-backup: the backup is failed on restart and its partial image removed")
    func killedMidBackup() throws {
        let dir = try TemporaryDirectory()
        let device = try LoopDevice(size: 32 << 20, in: dir.path, fill: .random)
        let daemon = try DaemonProcess(in: dir)
        let chain = dir.file("chain")
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        do {
            let qmp = try QMPSession(socket: daemon.socket)
            try qmp.execute("drive-backup", qmpArgs(["device": device.path, "target": chain, "sync": "full",
                                                     "job-id": "doomed", "speed": 1 << 20]))
            try qmp.waitForStatus("doomed", "running")
            // Some data copied, so a partial image exists.
            while (try qmp.job("doomed")?["current-progress"]?.intValue ?? 0) == 0 { usleep(50_000) }
        }
        let running = try list(daemon)
        #expect(running.first?["status"]?.stringValue == "running" && running.first?["restorable"]?.boolValue == false)
        #expect(try FileManager.default.contentsOfDirectory(atPath: chain).contains { $0.hasSuffix(".partial") })
        daemon.kill()
        try daemon.start()
        let after = try list(daemon)
        #expect(after.count == 1)
        #expect(after.first?["status"]?.stringValue == "failed")
        #expect(after.first?["restorable"]?.boolValue == false)
        #expect(after.first?["error"]?.stringValue?.contains("interrupted") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: chain).isEmpty, "the partial image is removed")
        #expect(daemon.log().contains("was interrupted by a daemon stop"))
    }
}
