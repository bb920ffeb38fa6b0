import Foundation
import PropertyBased
import Testing
@testable import Catalog

/// The JSON a record travels in and the text `ringback list` / `show` print.
@Suite struct ListingTests {
    /// 2025-06-15T15:06:40.123Z plus `seconds`, made as the catalog makes times (from milliseconds).
    static func at(_ seconds: Double = 0) -> Date { Timestamp.date(milliseconds: 1_750_000_000_123 + Int64(seconds * 1000)) }
    static let t0 = at()

    static let full = BackupRecord(
        id: "b-1", jobID: "backup-0", device: "/dev/sdb", chainID: 1, chain: "/var/lib/ringback/repo/sdb/c1",
        kind: .full, sync: .full, image: "/var/lib/ringback/repo/sdb/c1/0001-full.qcow2", format: "qcow2",
        status: .complete, consistency: .frozen, startedAt: t0, finishedAt: at(125.5),
        bytesRead: 1 << 30, bytesWritten: 300 << 20, imageSize: 301 << 20, imageDigest: "0a1b2c3d")
    static let inc = BackupRecord(
        id: "b-2", jobID: "backup-1", device: "/dev/sdb", chainID: 1, chain: "/var/lib/ringback/repo/sdb/c1",
        kind: .incremental, sync: .incremental, bitmap: "nightly",
        image: "/var/lib/ringback/repo/sdb/c1/0002-inc.qcow2", status: .failed,
        error: "cannot write image: No space left on device (ENOSPC)", startedAt: at(86400),
        finishedAt: at(86400 + 3), bytesRead: 4096, parentID: "b-1")
    static let running = BackupRecord(
        id: "b-3", device: "/dev/vg0/root", kind: .full, sync: .full, image: "/backups/root.raw", format: "raw",
        status: .running, startedAt: at(90000))

    @Test func aRecordEncodesToQMPStyleJSON() throws {
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(Self.inc)) as! [String: Any]
        #expect(Set(json.keys) == ["id", "job-id", "device", "chain-id", "chain", "kind", "sync", "bitmap", "image",
                                   "format", "status", "error", "consistency", "started-at", "finished-at",
                                   "bytes-read", "parent", "restorable"])
        #expect(json["started-at"] as? String == "2025-06-16T15:06:40.123Z")
        #expect(json["finished-at"] as? String == "2025-06-16T15:06:43.123Z")
        #expect(json["consistency"] as? String == "crash-inconsistent")
        #expect(json["restorable"] as? Bool == false)
        #expect(json["parent"] as? String == "b-1")
        #expect(json["bytes-read"] as? Int == 4096)
        #expect(json["chain-id"] as? Int == 1)
        // Absent values are left out, not null.
        let running = try JSONSerialization.jsonObject(with: JSONEncoder().encode(Self.running)) as! [String: Any]
        #expect(Set(running.keys) == ["id", "device", "kind", "sync", "image", "format", "status", "consistency",
                                      "started-at", "restorable"])
    }

    @Test(arguments: [full, inc, running])
    func decodingWhatWasEncodedGivesTheRecordBack(record: BackupRecord) throws {
        let encoder = JSONEncoder()
        // Whatever date strategy the encoder has, times stay ISO 8601 strings.
        encoder.dateEncodingStrategy = .secondsSince1970
        let back = try JSONDecoder().decode(BackupRecord.self, from: encoder.encode(record))
        #expect(back == record)
    }

    /// Milliseconds survive text and the catalog's integers, whatever the
    /// Double rounding of the Date in between.
    @Test func timesRoundTripAtMillisecondPrecision() async {
        await propertyCheck(count: 500, input: Gen.int64(in: 0...4_102_444_800_000)) { ms in
            let date = Timestamp.date(milliseconds: ms)
            #expect(Timestamp.milliseconds(date) == ms)
            let text = Timestamp.text(date)
            #expect(text.count == 24 && text.hasSuffix("Z"))
            let record = BackupRecord(id: "b", device: "/d", kind: .full, sync: .full, image: "/i", status: .running,
                                      startedAt: date)
            let back = try JSONDecoder().decode(BackupRecord.self, from: JSONEncoder().encode(record))
            #expect(Timestamp.milliseconds(back.startedAt) == ms)
        }
    }

    @Test func theTableFlagsWhatCannotBeRestoredAndSaysWhy() {
        let now = Self.at(90012)
        let text = BackupListing.table([Self.full, Self.inc, Self.running], now: now, timeZone: TimeZone(identifier: "UTC")!)
        let expected = """
            ID   DEVICE         KIND         STATUS    RESTORABLE  CONSISTENCY         STARTED              DURATION      SIZE       IMAGE
            b-1  /dev/sdb       full         complete  yes         frozen              2025-06-15 15:06:40  2m05s         301.0 MiB  /var/lib/ringback/repo/sdb/c1/0001-full.qcow2
            b-2  /dev/sdb       incremental  failed    NO          crash-inconsistent  2025-06-16 15:06:40  3.0s          -          /var/lib/ringback/repo/sdb/c1/0002-inc.qcow2
            b-3  /dev/vg0/root  full         running   NO          crash-inconsistent  2025-06-16 16:06:40  12.0s so far  -          /backups/root.raw

            2 of 3 not restorable:
              b-2  the backup failed: cannot write image: No space left on device (ENOSPC)
              b-3  the backup is still running

            """
        #expect(text == expected)
        #expect(BackupListing.table([]) == "no backups\n")
    }

    @Test func showPrintsEveryField() {
        let text = BackupListing.details(Self.inc, timeZone: TimeZone(identifier: "Europe/Berlin")!)
        let expected = """
            id:            b-2
            job id:        backup-1
            device:        /dev/sdb
            kind:          incremental
            sync:          incremental
            bitmap:        nightly
            status:        failed
            error:         cannot write image: No space left on device (ENOSPC)
            restorable:    no: the backup failed: cannot write image: No space left on device (ENOSPC)
            consistency:   crash-inconsistent
            started:       2025-06-16 17:06:40.123 +02:00
            finished:      2025-06-16 17:06:43.123 +02:00
            duration:      3.0s
            chain:         /var/lib/ringback/repo/sdb/c1 (chain 1)
            parent:        b-1
            image:         /var/lib/ringback/repo/sdb/c1/0002-inc.qcow2
            format:        qcow2
            image size:    -
            image digest:  -
            bytes read:    4.0 KiB (4096 bytes)
            bytes written: -

            """
        #expect(text == expected)
        let full = BackupListing.details(Self.full, timeZone: TimeZone(identifier: "UTC")!)
        #expect(full.contains("restorable:    yes\n"))
        #expect(full.contains("started:       2025-06-15 15:06:40.123 Z\n"))
        #expect(full.contains("image size:    301.0 MiB (315621376 bytes)\n"))
        #expect(full.contains("image digest:  0a1b2c3d\n"))
    }

    static let durationCases: [(Double, String)] = [
        (0, "0.0s"), (0.44, "0.4s"), (59.94, "59.9s"), (60, "1m00s"), (125.5, "2m05s"), (3599, "59m59s"),
        (3600, "1h00m00s"), (86399, "23h59m59s"), (3 * 86400 + 4 * 3600 + 300, "3d04h05m"),
    ]

    @Test(arguments: durationCases)
    func durations(seconds: Double, text: String) {
        #expect(BackupListing.duration(seconds) == text)
    }

    static let byteCases: [(UInt64, String)] = [
        (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (64 << 20, "64.0 MiB"), (3 << 40, "3.0 TiB"),
    ]

    @Test(arguments: byteCases)
    func byteCounts(n: UInt64, text: String) {
        #expect(BackupListing.bytes(n) == text)
    }

    /// Without --all, a failure is hidden exactly when a later backup of the
    /// same device can be restored; everything else stays, in order.
    @Test func hidingSupersededFailures() async {
        let gen = Gen.int(in: 0...1_000).array(of: 0...20)
        await propertyCheck(count: 400, input: gen) { raw in
            let records = raw.enumerated().map { i, n in
                BackupRecord(id: "b-\(i)", device: "/dev/d\(n % 3)", kind: .full, sync: .full, image: "/i\(i)",
                             status: BackupStatus.allCases[(n / 3) % 4], startedAt: Self.t0)
            }
            let shown = BackupListing.hidingSupersededFailures(records)
            let expected = records.indices.filter { i in
                let r = records[i]
                let failure = r.status == .failed || r.status == .cancelled
                return !(failure && records[(i + 1)...].contains { $0.device == r.device && $0.restorable })
            }.map { records[$0].id }
            #expect(shown.map(\.id) == expected)
        }
    }

    @Test func theCatalogHidesSupersededFailuresOnlyWhenAsked() throws {
        let t = try TestCatalog()
        let a = try t.catalog.beginBackup(start())
        try t.catalog.failBackup(id: a.id, error: "boom")
        let b = try t.catalog.beginBackup(start())
        try t.catalog.completeBackup(id: b.id, figures: someFigures)
        let c = try t.catalog.beginBackup(start())
        try t.catalog.failBackup(id: c.id, status: .cancelled, error: "cancelled by the operator")
        #expect(try t.catalog.backups().map(\.id) == [a.id, b.id, c.id])
        #expect(try t.catalog.backups(includingSupersededFailures: false).map(\.id) == [b.id, c.id])
    }
}
