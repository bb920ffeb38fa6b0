import Foundation

/// What chain maintenance (merges and retention, DESIGN §8) records. Every
/// record here is a restore point: a merge gives up the full's point in time
/// and keeps the incremental's, whose backup then holds the merged full image.
extension Catalog {
    /// Before a merge writes anything: the backups whose image is `fullImage`
    /// (in the chain folder of that path) stop being restorable — status
    /// `merged`, pointing at the backup of `incrementalImage` when the catalog
    /// has it. Repeating it changes nothing. Returns the backups retired now.
    @discardableResult
    public func retireForMerge(fullImage: String, incrementalImage: String, at time: Date = Date())
        throws(CatalogError) -> [BackupRecord] {
        let op = "record the merge of \(incrementalImage) into \(fullImage)"
        return try locked { c throws(CatalogError) in
            try c.transaction(op) { () throws(CatalogError) in
                let into = try c.backupIDs(image: incrementalImage, statuses: [.complete], op).first
                let ids = try c.backupIDs(image: fullImage, statuses: [.complete], op)
                for id in ids { try c.retire(id, as: .merged, into: into, at: time, op) }
                return try c.backups(ids: ids, op)
            }
        }
    }

    /// After a merge put its files in place: the backup of `incrementalImage`
    /// becomes a full backup whose image is `mergedImage` (its point in time,
    /// digest and consistency unchanged), and the backups of `fullImage` are
    /// `merged` into it. Idempotent: a repeated call finds the backup by its
    /// new image. Returns the backup that holds the merged image, if the
    /// catalog knows it.
    @discardableResult
    public func recordMerge(fullImage: String, incrementalImage: String, mergedImage: String, imageSize: UInt64?,
                            at time: Date = Date()) throws(CatalogError) -> BackupRecord? {
        let op = "record the merge of \(incrementalImage) into \(fullImage)"
        return try locked { c throws(CatalogError) in
            try c.transaction(op) { () throws(CatalogError) in
                var into = try c.backupIDs(image: incrementalImage, statuses: [.complete], op).first
                if into == nil { into = try c.backupIDs(image: mergedImage, statuses: [.complete], op).first }
                if let into {
                    try c.run("""
                        UPDATE backups SET kind = 'full', parent_id = NULL, image = ?, image_size = coalesce(?, image_size)
                        WHERE id = ?
                        """, [.text(mergedImage), .int(imageSize), .text(into)], op)
                }
                for id in try c.backupIDs(image: fullImage, statuses: [.complete, .merged], op) {
                    try c.retire(id, as: .merged, into: into, at: time, op)
                }
                return try c.backups(ids: into.map { [$0] } ?? [], op).first
            }
        }
    }

    /// Retention removed the chain in `directory`: each complete backup of it
    /// (recorded in that chain, or with its image in that folder) is marked
    /// `removed`. Returns them.
    @discardableResult
    public func removeChain(directory: String, at time: Date = Date()) throws(CatalogError) -> [BackupRecord] {
        let op = "record the removal of chain \(directory)"
        let folder = Self.canonical(directory)
        return try locked { c throws(CatalogError) in
            try c.transaction(op) { () throws(CatalogError) in
                let chains = try c.chains(device: nil, directory: nil, op).filter { Self.canonical($0.directory) == folder }
                let records = try c.backups(device: nil, op).filter { r in
                    r.status == .complete && (chains.contains { $0.id == r.chainID }
                        || Self.canonical((r.image as NSString).deletingLastPathComponent) == folder)
                }
                for r in records { try c.retire(r.id, as: .removed, into: nil, at: time, op) }
                return try c.backups(ids: records.map(\.id), op)
            }
        }
    }

    /// A path with `.`, `..`, doubled slashes and symbolic links resolved, so
    /// that two spellings of one folder compare equal.
    static func canonical(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
    }
}

extension Connection {
    /// The backups with these ids, in that order (ids not found are left out).
    func backups(ids: [String], _ op: String) throws(CatalogError) -> [BackupRecord] {
        var out: [BackupRecord] = []
        for id in ids { if let r = try backup(id: id, op) { out.append(r) } }
        return out
    }

    /// The ids of backups in `statuses` whose image is `image`, however the
    /// folder was spelled when they were recorded, newest first.
    func backupIDs(image: String, statuses: Set<BackupStatus>, _ op: String) throws(CatalogError) -> [String] {
        let name = "/" + (image as NSString).lastPathComponent
        let folder = Catalog.canonical((image as NSString).deletingLastPathComponent)
        let rows = try query("""
            SELECT id, image, status FROM backups
            WHERE image = ?1 OR (length(image) >= length(?2) AND substr(image, length(image) - length(?2) + 1) = ?2)
            ORDER BY seq DESC
            """, [.text(image), .text(name)], op) { r in (r.text(0) ?? "", r.text(1) ?? "", r.text(2) ?? "") }
        return rows.filter { _, path, status in
            guard let s = BackupStatus(rawValue: status), statuses.contains(s) else { return false }
            return path == image || Catalog.canonical((path as NSString).deletingLastPathComponent) == folder
        }.map(\.0)
    }

    /// Moves a complete (or, for a repeated merge, merged) backup to a
    /// retired status by the transition table.
    func retire(_ id: String, as status: BackupStatus, into: String?, at time: Date, _ op: String) throws(CatalogError) {
        let current = try query("SELECT status FROM backups WHERE id = ?", [.text(id)], op) { $0.text(0) ?? "" }.first
        guard let raw = current, let from = BackupStatus(rawValue: raw) else {
            throw CatalogError(.notFound, path: path, operation: op, reason: "Backup '\(id)' not found")
        }
        guard from.successors.contains(status) || from == status else {
            throw CatalogError(.notRunning, path: path, operation: op,
                               reason: "backup '\(id)' is \(from.rawValue) and cannot become \(status.rawValue)")
        }
        try run("""
            UPDATE backups SET status = ?, merged_into = coalesce(?, merged_into), retired_at = coalesce(retired_at, ?)
            WHERE id = ?
            """, [.text(status.rawValue), .text(into), .int(Timestamp.milliseconds(time)), .text(id)], op)
    }
}
