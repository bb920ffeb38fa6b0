import Foundation
import PropertyBased
import Testing
import TestSupport
@testable import Catalog

/// Which backups the catalog offers for restore (DESIGN §8: a backup that did
/// not complete is never shown as restorable, nor is anything built on one).
@Suite struct RestorableTests {
    /// Ends a running backup in `status` (running leaves it).
    static func finish(_ catalog: Catalog, _ id: String, as status: BackupStatus) throws {
        switch status {
        case .running: break
        case .complete: try catalog.completeBackup(id: id, figures: someFigures)
        case .failed, .cancelled: try catalog.failBackup(id: id, status: status, error: "it went wrong")
        case .merged, .removed:
            // Retired by chain maintenance, which only ever retires a complete backup.
            try catalog.completeBackup(id: id, figures: someFigures)
            try catalog.locked { c throws(CatalogError) in try c.retire(id, as: status, into: nil, at: Date(), "retire") }
        }
    }

    @Test(arguments: BackupStatus.allCases)
    func aFullBackupIsRestorableOnlyWhenComplete(status: BackupStatus) throws {
        let t = try TestCatalog()
        let b = try t.catalog.beginBackup(start())
        try Self.finish(t.catalog, b.id, as: status)
        let r = try #require(try t.catalog.backup(id: b.id))
        #expect(r.restorable == (status == .complete))
        #expect((r.notRestorableReason == nil) == (status == .complete))
    }

    /// An incremental over a parent in each status, itself in each status.
    @Test(arguments: BackupStatus.allCases, BackupStatus.allCases)
    func anIncrementalNeedsItselfAndItsParentComplete(parentStatus: BackupStatus, status: BackupStatus) throws {
        let t = try TestCatalog()
        let parent = try t.catalog.beginBackup(start())
        let child = try t.catalog.beginBackup(start(.incremental, parent: parent.id))
        try Self.finish(t.catalog, parent.id, as: parentStatus)
        try Self.finish(t.catalog, child.id, as: status)
        let r = try #require(try t.catalog.backup(id: child.id))
        // A merged parent's data is still the base of its child (see BackupStatus).
        let parentWhole = parentStatus == .complete || parentStatus == .merged
        #expect(r.restorable == (status == .complete && parentWhole))
        if status == .complete && !parentWhole {
            #expect(r.incompleteAncestor == parent.id)
            #expect(r.notRestorableReason == "backup '\(parent.id)' in its chain is not complete")
        }
    }

    @Test func aBrokenLinkAnywhereUpTheChainIsNamed() throws {
        let t = try TestCatalog()
        let full = try t.catalog.beginBackup(start())
        try t.catalog.completeBackup(id: full.id, figures: someFigures)
        let inc1 = try t.catalog.beginBackup(start(.incremental, parent: full.id))
        let inc2 = try t.catalog.beginBackup(start(.incremental, parent: inc1.id))
        let inc3 = try t.catalog.beginBackup(start(.incremental, parent: inc2.id))
        try t.catalog.failBackup(id: inc1.id, error: "ENOSPC")
        try t.catalog.completeBackup(id: inc2.id, figures: someFigures)
        try t.catalog.completeBackup(id: inc3.id, figures: someFigures)
        let byID = Dictionary(uniqueKeysWithValues: try t.catalog.backups().map { ($0.id, $0) })
        #expect(byID[full.id]?.restorable == true)
        #expect(byID[inc1.id]?.restorable == false)
        #expect(byID[inc2.id]?.incompleteAncestor == inc1.id)
        #expect(byID[inc3.id]?.incompleteAncestor == inc1.id)
        #expect(byID[inc3.id]?.restorable == false)
    }

    @Test func anIncrementalWithoutAParentIsNotRestorable() throws {
        let t = try TestCatalog()
        let b = try t.catalog.beginBackup(start(.incremental))
        let done = try t.catalog.completeBackup(id: b.id, figures: someFigures)
        #expect(!done.restorable)
        #expect(done.notRestorableReason == "the catalog has no parent backup for this incremental")
    }

    /// Random histories of two devices, recorded in a real catalog: a backup is
    /// restorable exactly when it and every backup it builds on completed.
    @Test func restorableIsCompleteAllTheWayDown() async throws {
        let steps = Gen.int(in: 0...1_000_000).array(of: 1...14)
        await propertyCheck(count: 40, input: steps) { raw in
            let t = try TestCatalog()
            // Each number decodes into a device, a parent and a final status,
            // biased towards long chains of complete backups so that a broken
            // link deep down is common.
            var model: [(id: String, device: Int, parent: Int?, status: BackupStatus)] = []
            let statuses: [BackupStatus] = [.complete, .complete, .complete, .complete, .failed, .failed, .cancelled, .running]
            for n in raw {
                let device = n % 2
                let earlier = model.indices.filter { model[$0].device == device }
                let parent: Int? = switch (n / 2) % 4 {
                case 0: nil
                case 1, 2: earlier.last
                default: earlier.isEmpty ? nil : earlier[(n / 64) % earlier.count]
                }
                let status = statuses[(n / 8) % 8]
                let b = try t.catalog.beginBackup(start(parent == nil ? .full : .incremental, device: "/dev/test\(device)",
                                                        parent: parent.map { model[$0].id }))
                model.append((b.id, device, parent, status))
            }
            // Finish them in reverse, so children often end before their parents.
            for m in model.reversed() { try Self.finish(t.catalog, m.id, as: m.status) }
            func expected(_ i: Int) -> Bool {
                model[i].status == .complete && (model[i].parent.map(expected) ?? true)
            }
            let records = try t.catalog.backups()
            #expect(records.map(\.id) == model.map(\.id))
            for (i, r) in records.enumerated() {
                #expect(r.restorable == expected(i), "\(r.id) in \(model)")
                #expect(r.status == model[i].status)
            }
        }
    }
}
