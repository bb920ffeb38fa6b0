import Foundation
import Testing
import TestSupport
@testable import Catalog

/// What chain maintenance records: a merge retires the full's point in time
/// and moves the incremental's backup onto the merged full image; retention
/// marks a removed chain's backups. Each backup record is one restore point.
@Suite struct MaintenanceTests {
    static let chain = "/repo/dev/test0/chain-1"

    /// A complete backup of /dev/test0 in `chain`, its image named `name`.
    func backup(_ t: TestCatalog, _ name: String, parent: BackupRecord? = nil, chain: String = chain,
                digest: String = "00ff10ab") throws -> BackupRecord {
        let b = try t.catalog.beginBackup(BackupStart(device: "/dev/test0", chain: chain,
                                                      kind: parent == nil ? .full : .incremental,
                                                      bitmap: parent == nil ? nil : "nightly", image: chain + "/" + name,
                                                      consistency: .frozen, parentID: parent?.id))
        var figures = someFigures
        figures.imageDigest = digest
        return try t.catalog.completeBackup(id: b.id, figures: figures)
    }

    func byID(_ t: TestCatalog) throws -> [String: BackupRecord] {
        Dictionary(uniqueKeysWithValues: try t.catalog.backups().map { ($0.id, $0) })
    }

    @Test func aMergeRetiresTheFullAndTheIncrementalsBackupTakesTheMergedImage() throws {
        let t = try TestCatalog()
        let full = try backup(t, "0000-full-20250601T020000Z.qcow2", digest: "aa")
        let inc1 = try backup(t, "0001-inc-20250602T020000Z.qcow2", parent: full, digest: "bb")
        let inc2 = try backup(t, "0002-inc-20250603T020000Z.qcow2", parent: inc1, digest: "cc")
        let merged = Self.chain + "/0001-full-20250602T020000Z.qcow2"

        // Before anything is written, the full's point in time stops being restorable ...
        let retired = try t.catalog.retireForMerge(fullImage: full.image, incrementalImage: inc1.image)
        #expect(retired.map(\.id) == [full.id])
        var now = try byID(t)
        #expect(now[full.id]?.status == .merged && now[full.id]?.restorable == false)
        #expect(now[full.id]?.mergedInto == inc1.id && now[full.id]?.retiredAt != nil)
        #expect(now[full.id]?.notRestorableReason?.contains("merged away") == true)
        // ... while the points still in the chain stay restorable meanwhile.
        #expect(now[inc1.id]?.restorable == true && now[inc2.id]?.restorable == true)

        let holder = try t.catalog.recordMerge(fullImage: full.image, incrementalImage: inc1.image, mergedImage: merged,
                                               imageSize: 12345)
        #expect(holder?.id == inc1.id)
        now = try byID(t)
        let i1 = try #require(now[inc1.id])
        #expect(i1.kind == .full && i1.parentID == nil && i1.image == merged && i1.imageSize == 12345)
        #expect(i1.status == .complete && i1.restorable)
        // Its point in time is unchanged: the same content digest, consistency, bitmap and times.
        #expect(i1.imageDigest == "bb" && i1.consistency == .frozen && i1.bitmap == "nightly")
        #expect(i1.startedAt == inc1.startedAt && i1.sync == .incremental)
        #expect(now[inc2.id]?.parentID == inc1.id && now[inc2.id]?.restorable == true)
        #expect(now[full.id]?.status == .merged && now[full.id]?.image == full.image)

        // Repeating it (a merge finished after a crash) changes nothing.
        let before = try t.catalog.backups()
        try t.catalog.retireForMerge(fullImage: full.image, incrementalImage: inc1.image)
        try t.catalog.recordMerge(fullImage: full.image, incrementalImage: inc1.image, mergedImage: merged, imageSize: 12345)
        #expect(try t.catalog.backups() == before)
        #expect(try t.catalog.backup(image: merged)?.id == inc1.id)

        // The next merge retires the merged full in turn.
        let merged2 = Self.chain + "/0002-full-20250603T020000Z.qcow2"
        try t.catalog.retireForMerge(fullImage: merged, incrementalImage: inc2.image)
        try t.catalog.recordMerge(fullImage: merged, incrementalImage: inc2.image, mergedImage: merged2, imageSize: 1)
        now = try byID(t)
        #expect(now[inc1.id]?.status == .merged && now[inc1.id]?.mergedInto == inc2.id)
        #expect(now[full.id]?.mergedInto == inc1.id, "an earlier merge's record is left as it was")
        #expect(now[inc2.id]?.kind == .full && now[inc2.id]?.image == merged2 && now[inc2.id]?.restorable == true)
        #expect(try t.catalog.backups().filter(\.restorable).map(\.id) == [inc2.id])
        // `ringback list` without --all shows restore points only.
        #expect(try t.catalog.backups(includingSupersededFailures: false).map(\.id) == [inc2.id])
        #expect(try sqlite3(t.path, "PRAGMA foreign_key_check") == "")
    }

    @Test func aMergeFindsItsBackupsHoweverTheFolderIsSpelled() throws {
        let t = try TestCatalog()
        let full = try backup(t, "0000-full-A.qcow2")
        let inc = try backup(t, "0001-inc-B.qcow2", parent: full)
        let spelled = "/repo/dev/../dev/test0/./chain-1"
        try t.catalog.retireForMerge(fullImage: spelled + "/0000-full-A.qcow2", incrementalImage: spelled + "/0001-inc-B.qcow2")
        try t.catalog.recordMerge(fullImage: spelled + "/0000-full-A.qcow2", incrementalImage: spelled + "/0001-inc-B.qcow2",
                                  mergedImage: Self.chain + "/0001-full-B.qcow2", imageSize: nil)
        let now = try byID(t)
        #expect(now[full.id]?.status == .merged)
        #expect(now[inc.id]?.image == Self.chain + "/0001-full-B.qcow2" && now[inc.id]?.imageSize == someFigures.imageSize)
        // Another chain's image of the same name is not touched.
        let other = try backup(t, "0000-full-A.qcow2", chain: "/repo/dev/test0/chain-2")
        try t.catalog.retireForMerge(fullImage: Self.chain + "/0000-full-A.qcow2", incrementalImage: "/nowhere/x.qcow2")
        #expect(try t.catalog.backup(id: other.id)?.status == .complete)
    }

    @Test func removingAChainRetiresItsCompleteBackupsOnly() throws {
        let t = try TestCatalog()
        let full = try backup(t, "0000-full-A.qcow2")
        let inc = try backup(t, "0001-inc-B.qcow2", parent: full)
        let failed = try t.catalog.beginBackup(BackupStart(device: "/dev/test0", chain: Self.chain, kind: .incremental,
                                                           image: Self.chain + "/0002-inc-C.qcow2", parentID: inc.id))
        try t.catalog.failBackup(id: failed.id, error: "ENOSPC")
        let keptChain = "/repo/dev/test0/chain-2"
        let kept = try backup(t, "0000-full-D.qcow2", chain: keptChain)

        let removed = try t.catalog.removeChain(directory: "/repo/dev/test0/chain-1/")
        #expect(Set(removed.map(\.id)) == [full.id, inc.id])
        let now = try byID(t)
        for id in [full.id, inc.id] {
            #expect(now[id]?.status == .removed && now[id]?.restorable == false && now[id]?.retiredAt != nil)
            #expect(now[id]?.notRestorableReason == "its chain was removed by retention")
        }
        #expect(now[failed.id]?.status == .failed)
        #expect(now[kept.id]?.status == .complete && now[kept.id]?.restorable == true)
        #expect(try t.catalog.removeChain(directory: Self.chain).isEmpty, "a second removal finds nothing left")
        #expect(try t.catalog.backups(includingSupersededFailures: false).map(\.id) == [kept.id])

        // The records say so on the wire and in `ringback show`.
        let json = String(decoding: try JSONEncoder().encode(now[full.id]!), as: UTF8.self)
        #expect(json.contains(#""status":"removed""#) && json.contains(#""retired-at":"#) && json.contains(#""restorable":false"#))
        let decoded = try JSONDecoder().decode(BackupRecord.self, from: Data(json.utf8))
        #expect(decoded == now[full.id]!)
        let details = BackupListing.details(now[full.id]!, timeZone: TimeZone(identifier: "UTC")!)
        #expect(details.split(separator: "\n").contains { $0.hasPrefix("status:") && $0.hasSuffix(" removed") })
        #expect(details.contains("no: its chain was removed by retention"))
        #expect(BackupListing.table(try t.catalog.backups()).contains("3 of 4 not restorable"))
    }

    @Test func onlyCompleteBackupsAreRetired() throws {
        let t = try TestCatalog()
        let running = try t.catalog.beginBackup(start())
        let e = #expect(throws: CatalogError.self) {
            try t.catalog.locked { c throws(CatalogError) in try c.retire(running.id, as: .merged, into: nil, at: Date(), "test") }
        }
        #expect(e?.reason == "backup '\(running.id)' is running and cannot become merged")
        // A merge of an image the catalog holds no complete backup of records nothing.
        #expect(try t.catalog.retireForMerge(fullImage: running.image, incrementalImage: "/x/y.qcow2").isEmpty)
        #expect(try t.catalog.backup(id: running.id)?.status == .running)
        // The schema refuses a status it does not know, and merged-into on anything but a merged backup.
        let bad = try Shell.run(["sqlite3", t.path, "UPDATE backups SET status = 'frobbed' WHERE id = '\(running.id)'"])
        #expect(!bad.succeeded && bad.stderr.contains("CHECK constraint failed"))
        let into = try Shell.run(["sqlite3", t.path, "UPDATE backups SET merged_into = id WHERE id = '\(running.id)'"])
        #expect(!into.succeeded && into.stderr.contains("CHECK constraint failed"))
    }

    /// A catalog written by the version-1 schema keeps every row, the ids it
    /// handed out and its foreign keys when it is opened by this build.
    @Test func aVersion1CatalogIsMigrated() throws {
        let dir = try TemporaryDirectory(prefix: "ringback-catalog")
        let path = dir.file("catalog.db")
        try sqlite3(path, Schema.migrations[0] + """
            INSERT INTO schema_version VALUES (1, 0);
            INSERT INTO devices VALUES ('/dev/sdb', NULL, 1024, 0, 0);
            INSERT INTO chains (id, device, directory, created) VALUES (1, '/dev/sdb', '/repo/sdb/c', 0);
            INSERT INTO backups (seq, id, device, chain_id, kind, sync, image, format, status, started_at, image_digest)
                VALUES (3, 'b-3', '/dev/sdb', 1, 'full', 'full', '/repo/sdb/c/0000-full-A.qcow2', 'qcow2', 'complete', 5, 'ab');
            INSERT INTO backups (seq, id, device, chain_id, kind, sync, bitmap, image, format, status, started_at, parent_id)
                VALUES (4, 'b-4', '/dev/sdb', 1, 'incremental', 'incremental', 'n', '/repo/sdb/c/0001-inc-B.qcow2', 'qcow2',
                        'complete', 6, 'b-3');
            UPDATE sqlite_sequence SET seq = 9 WHERE name = 'backups';
            """)
        #expect(try sqlite3(path, "SELECT seq FROM sqlite_sequence WHERE name = 'backups'") == "9")
        let catalog = try Catalog(path: path)
        #expect(try catalog.schemaVersion() == 2)
        let records = try catalog.backups()
        #expect(records.map(\.id) == ["b-3", "b-4"])
        #expect(records[1].parentID == "b-3" && records[1].restorable && records[0].imageDigest == "ab")
        #expect(try sqlite3(path, "SELECT seq FROM backups ORDER BY seq") == "3\n4")
        // The AUTOINCREMENT counter survived the rebuild: no id is handed out twice.
        let next = try catalog.beginBackup(BackupStart(device: "/dev/sdb", kind: .full, image: "/x.qcow2"))
        #expect(next.id == "b-10")
        #expect(try sqlite3(path, "PRAGMA foreign_key_check") == "")
        #expect(try sqlite3(path, "PRAGMA integrity_check") == "ok")
        #expect(try sqlite3(path, "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'backups' AND name LIKE 'backups_by_%' ORDER BY name")
                == "backups_by_device\nbackups_by_image\nbackups_by_status")
        // Foreign keys are enforced again after the migration.
        let orphan = #expect(throws: CatalogError.self) {
            try catalog.locked { c throws(CatalogError) in
                try c.run("UPDATE backups SET merged_into = 'b-99', status = 'merged' WHERE id = 'b-4'", [], "test")
            }
        }
        #expect(orphan?.reason.contains("FOREIGN KEY") == true)
        try catalog.retireForMerge(fullImage: "/repo/sdb/c/0000-full-A.qcow2", incrementalImage: "/repo/sdb/c/0001-inc-B.qcow2")
        #expect(try catalog.backup(id: "b-3")?.status == .merged)
    }
}
