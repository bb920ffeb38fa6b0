import Foundation
import Synchronization
import Testing
import TestSupport
@testable import Catalog

/// Recording backups from start to end, and the devices, bitmaps and chains
/// around them.
@Suite struct BackupLifecycleTests {
    @Test func beginRecordsARunningBackupWithTheNextId() throws {
        let t = try TestCatalog()
        let when = Date(timeIntervalSince1970: 1_750_000_000.123)
        let s = start(chain: "/repo/test0/chain-1", at: when)
        let b = try t.catalog.beginBackup(s)
        #expect(b.id == "b-1")
        #expect(b.status == .running)
        #expect(b.jobID == s.jobID && b.device == s.device && b.image == s.image && b.format == "qcow2")
        #expect(b.kind == .full && b.sync == .full && b.bitmap == nil && b.parentID == nil)
        #expect(b.consistency == .crashInconsistent)
        #expect(b.startedAt == when)
        #expect(b.finishedAt == nil && b.bytesRead == nil && b.error == nil)
        #expect(b.chain == "/repo/test0/chain-1")
        #expect(!b.restorable)
        #expect(try t.catalog.beginBackup(start()).id == "b-2")
        // The row as the sqlite3 shell sees it.
        #expect(try sqlite3(t.path, "SELECT id, status, started_at, consistency FROM backups WHERE seq = 1")
            == "b-1|running|1750000000123|crash-inconsistent")
    }

    @Test func completeRecordsTheFigures() throws {
        let t = try TestCatalog()
        let b = try t.catalog.beginBackup(start())
        let end = b.startedAt.addingTimeInterval(42.5)
        let figures = BackupFigures(bytesRead: 1 << 30, bytesWritten: 5 << 20, imageSize: 6 << 20, imageDigest: "ABCDEF0123")
        let done = try t.catalog.completeBackup(id: b.id, figures: figures, consistency: .frozen, at: end)
        #expect(done.status == .complete && done.restorable)
        #expect(done.bytesRead == 1 << 30 && done.bytesWritten == 5 << 20 && done.imageSize == 6 << 20)
        #expect(done.imageDigest == "abcdef0123")
        #expect(done.consistency == .frozen)
        #expect(done.duration == 42.5)
        #expect(try t.catalog.backup(id: b.id) == done)
    }

    @Test(arguments: [BackupStatus.failed, .cancelled])
    func failRecordsTheStatusAndTheError(status: BackupStatus) throws {
        let t = try TestCatalog()
        let b = try t.catalog.beginBackup(start())
        let e = "cannot read /dev/test0 at offset 4096: Input/output error (EIO)"
        let failed = try t.catalog.failBackup(id: b.id, status: status, error: e,
                                              figures: BackupFigures(bytesRead: 4096, bytesWritten: 0))
        #expect(failed.status == status)
        #expect(failed.error == e)
        #expect(failed.bytesRead == 4096)
        #expect(failed.finishedAt != nil)
        #expect(!failed.restorable)
    }

    @Test func aFinishedBackupCannotFinishAgain() throws {
        let t = try TestCatalog()
        let b = try t.catalog.beginBackup(start())
        try t.catalog.failBackup(id: b.id, error: "boom")
        let e = #expect(throws: CatalogError.self) { try t.catalog.completeBackup(id: b.id, figures: someFigures) }
        #expect(e?.code == .notRunning)
        #expect(e?.description == "catalog \(t.path): cannot record backup '\(b.id)' as complete: "
            + "backup '\(b.id)' is already failed, not running")
        #expect(try t.catalog.backup(id: b.id)?.status == .failed)
        let again = #expect(throws: CatalogError.self) { try t.catalog.failBackup(id: b.id, status: .cancelled, error: "x") }
        #expect(again?.code == .notRunning)
        #expect(try t.catalog.backup(id: b.id)?.error == "boom")
    }

    /// The transition table, every pair: running → complete/failed/cancelled,
    /// and only a complete backup is retired (merged or removed).
    @Test(arguments: BackupStatus.allCases, BackupStatus.allCases)
    func transitions(from: BackupStatus, to: BackupStatus) {
        let finishing = from == .running && [.complete, .failed, .cancelled].contains(to)
        let retiring = from == .complete && (to == .merged || to == .removed)
        #expect(from.successors.contains(to) == (finishing || retiring))
    }

    @Test func unknownIdsAndBadArgumentsAreRefused() throws {
        let t = try TestCatalog()
        let missing = #expect(throws: CatalogError.self) { try t.catalog.completeBackup(id: "b-9", figures: someFigures) }
        #expect(missing?.code == .notFound)
        #expect(missing?.reason == "Backup 'b-9' not found")
        #expect(try t.catalog.backup(id: "b-9") == nil)
        let b = try t.catalog.beginBackup(start())
        let asComplete = #expect(throws: CatalogError.self) { try t.catalog.failBackup(id: b.id, status: .complete, error: "") }
        #expect(asComplete?.code == .invalidRecord)
        var bad = someFigures
        bad.imageDigest = "not-hex"
        let digest = #expect(throws: CatalogError.self) { try t.catalog.completeBackup(id: b.id, figures: bad) }
        #expect(digest?.reason.contains("'not-hex'") == true)
        #expect(try t.catalog.backup(id: b.id)?.status == .running)
        let duplicate = #expect(throws: CatalogError.self) { try t.catalog.beginBackup(start(id: b.id)) }
        #expect(duplicate?.code == .alreadyExists)
        let fullWithParent = #expect(throws: CatalogError.self) { try t.catalog.beginBackup(start(.full, parent: b.id)) }
        #expect(fullWithParent?.code == .invalidRecord)
        let noParent = #expect(throws: CatalogError.self) { try t.catalog.beginBackup(start(.incremental, parent: "b-77")) }
        #expect(noParent?.reason == "parent backup 'b-77' is not in the catalog")
        let otherDevice = #expect(throws: CatalogError.self) {
            try t.catalog.beginBackup(start(.incremental, device: "/dev/test1", parent: b.id))
        }
        #expect(otherDevice?.reason == "parent backup '\(b.id)' is of /dev/test0, not /dev/test1")
        // Nothing refused left a row behind.
        #expect(try t.catalog.backups().map(\.id) == [b.id])
    }

    @Test func callerChosenIdsAndGeneratedOnesDoNotCollide() throws {
        let t = try TestCatalog()
        #expect(try t.catalog.beginBackup(start(id: "b-2")).id == "b-2")
        #expect(try t.catalog.beginBackup(start()).id == "b-3")
        let uuid = UUID().uuidString.lowercased()
        #expect(try t.catalog.beginBackup(start(id: uuid)).id == uuid)
        #expect(try t.catalog.beginBackup(start()).id == "b-5")
        #expect(try t.catalog.backups().map(\.id) == ["b-2", "b-3", uuid, "b-5"])
    }

    @Test func markInterruptedFailsEveryRunningBackupAndOnlyThose() throws {
        let t = try TestCatalog()
        let a = try t.catalog.beginBackup(start())
        let b = try t.catalog.beginBackup(start(device: "/dev/test1"))
        let c = try t.catalog.beginBackup(start())
        try t.catalog.completeBackup(id: b.id, figures: someFigures)
        let d = try t.catalog.beginBackup(start(.incremental, device: "/dev/test1", parent: b.id))
        // As when ringbackd is killed: the file is closed with backups running.
        try t.reopen()
        let when = Date(timeIntervalSince1970: 1_800_000_000)
        let marked = try t.catalog.markInterrupted(at: when)
        #expect(marked.map(\.id) == [a.id, c.id, d.id])
        for r in marked {
            #expect(r.status == .failed)
            #expect(r.error == "interrupted: ringbackd stopped before the backup finished")
            #expect(r.finishedAt == when)
            #expect(!r.restorable)
        }
        #expect(try t.catalog.backup(id: b.id)?.status == .complete)
        #expect(try t.catalog.markInterrupted().isEmpty)
        #expect(try sqlite3(t.path, "SELECT count(*) FROM backups WHERE status = 'running'") == "0")
    }

    @Test func backupsFiltersByDeviceAndFindsByImage() throws {
        let t = try TestCatalog()
        let a = try t.catalog.beginBackup(start(device: "/dev/test0"))
        let b = try t.catalog.beginBackup(start(device: "/dev/test1"))
        let c = try t.catalog.beginBackup(start(.incremental, device: "/dev/test0", parent: a.id))
        #expect(try t.catalog.backups(device: "/dev/test0").map(\.id) == [a.id, c.id])
        #expect(try t.catalog.backups(device: "/dev/test1").map(\.id) == [b.id])
        #expect(try t.catalog.backups(device: "/dev/none").isEmpty)
        #expect(try t.catalog.backups().map(\.id) == [a.id, b.id, c.id])
        #expect(try t.catalog.backup(image: c.image)?.id == c.id)
        #expect(try t.catalog.backup(image: "/nowhere.qcow2") == nil)
    }

    @Test func devicesBitmapsAndChainsAreRecorded() throws {
        let t = try TestCatalog()
        let t0 = Date(timeIntervalSince1970: 1_700_000_000), t1 = t0.addingTimeInterval(3600)
        try t.catalog.recordDevice(path: "/dev/test0", identity: "8:0@0:64M:uuid-1", size: 64 << 20, at: t0)
        let again = try t.catalog.recordDevice(path: "/dev/test0", identity: "8:0@0:128M:uuid-1", size: 128 << 20, at: t1)
        #expect(again == DeviceRecord(path: "/dev/test0", identity: "8:0@0:128M:uuid-1", size: 128 << 20,
                                      firstSeen: t0, lastSeen: t1))
        try t.catalog.recordBitmap(device: "/dev/test0", name: "nightly", granularity: 65536, persistent: true, at: t1)
        try t.catalog.recordBitmap(device: "/dev/test0", name: "weekly", granularity: 4096, persistent: false, at: t1)
        // A bitmap of a device never recorded records the device too.
        try t.catalog.recordBitmap(device: "/dev/test1", name: "b0", granularity: 512, persistent: false, at: t1)
        #expect(try t.catalog.bitmaps(device: "/dev/test0").map(\.name) == ["nightly", "weekly"])
        #expect(try t.catalog.bitmaps(device: "/dev/test0").first?.persistent == true)
        #expect(try t.catalog.device(path: "/dev/test1")?.identity == nil)
        #expect(try t.catalog.removeBitmap(device: "/dev/test0", name: "nightly"))
        #expect(try !t.catalog.removeBitmap(device: "/dev/test0", name: "nightly"))
        #expect(try t.catalog.bitmaps().map(\.name) == ["weekly", "b0"])

        let chain = try t.catalog.recordChain(device: "/dev/test0", directory: "/repo/c1", at: t1)
        #expect(try t.catalog.recordChain(device: "/dev/test0", directory: "/repo/c1") == chain)
        let b = try t.catalog.beginBackup(start(chain: "/repo/c1"))
        #expect(b.chainID == chain.id)
        let wrong = #expect(throws: CatalogError.self) { try t.catalog.beginBackup(start(device: "/dev/test1", chain: "/repo/c1")) }
        #expect(wrong?.reason == "the chain folder /repo/c1 holds backups of /dev/test0, not /dev/test1")
        #expect(try t.catalog.chains(device: "/dev/test0") == [chain])
        #expect(try t.catalog.devices().map(\.path) == ["/dev/test0", "/dev/test1"])
    }

    /// Several threads share one catalog: every backup gets its own id and
    /// every write lands.
    @Test func concurrentWritersOnOneCatalog() throws {
        let t = try TestCatalog()
        let catalog = t.catalog!
        let threads = 6, each = 12
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { n in
            for i in 0..<each {
                do {
                    let b = try catalog.beginBackup(start(device: "/dev/test\(n)"))
                    if i % 3 == 2 {
                        try catalog.failBackup(id: b.id, error: "thread \(n) backup \(i)")
                    } else {
                        try catalog.completeBackup(id: b.id, figures: someFigures)
                    }
                    _ = try catalog.backups(device: "/dev/test\(n)")
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
        let all = try catalog.backups()
        #expect(all.count == threads * each)
        #expect(Set(all.map(\.id)) == Set((1...(threads * each)).map { "b-\($0)" }))
        #expect(all.filter { $0.status == .complete }.count == threads * each * 2 / 3)
        #expect(!all.contains { $0.status == .running })
        #expect(try sqlite3(t.path, "PRAGMA integrity_check") == "ok")
    }

    /// Two catalogs (two connections, as two processes would have) on one
    /// file, written from several threads: the busy timeout and BEGIN
    /// IMMEDIATE keep ids unique and lose no write.
    @Test func concurrentWritersOnTwoConnections() throws {
        let t = try TestCatalog()
        let catalogs = [t.catalog!, try Catalog(path: t.path)]
        let threads = 4, each = 10
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { n in
            let catalog = catalogs[n % 2]
            for _ in 0..<each {
                do {
                    let b = try catalog.beginBackup(start())
                    try catalog.completeBackup(id: b.id, figures: someFigures)
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
        for catalog in catalogs {
            let ids = try catalog.backups().map(\.id)
            #expect(Set(ids) == Set((1...(threads * each)).map { "b-\($0)" }))
        }
    }
}
