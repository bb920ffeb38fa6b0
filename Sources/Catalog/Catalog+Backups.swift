import Foundation

extension Catalog {
    /// The error text of a backup that was running when ringbackd stopped.
    public static let interruptedError = "interrupted: ringbackd stopped before the backup finished"

    /// Records a backup as `running` and returns its record. The id is
    /// `start.id`, or the next `b-<n>` when that is nil. Refused: an id already
    /// recorded, a full backup with a parent, a parent not in the catalog or of
    /// another device, a chain folder of another device.
    @discardableResult
    public func beginBackup(_ start: BackupStart) throws(CatalogError) -> BackupRecord {
        try locked { c throws(CatalogError) in
            let op = "record the start of a backup of \(start.device)"
            return try c.transaction(op) { () throws(CatalogError) in
                try c.checkParent(of: start, op)
                try c.touchDevice(start.device, at: start.startedAt, op)
                let chain = try start.chain.map { dir throws(CatalogError) in
                    try c.chain(device: start.device, directory: dir, at: start.startedAt, op)
                }
                let (seq, id) = try c.allocateID(start.id, op)
                try c.run("""
                    INSERT INTO backups (seq, id, job_id, device, chain_id, kind, sync, bitmap, image, format,
                                         status, consistency, started_at, parent_id)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)
                    """, [.int(seq), .text(id), .text(start.jobID), .text(start.device), .int(chain?.id),
                          .text(start.kind.rawValue), .text(start.sync.rawValue), .text(start.bitmap),
                          .text(start.image), .text(start.format), .text(start.consistency.rawValue),
                          .int(Timestamp.milliseconds(start.startedAt)), .text(start.parentID)], op)
                return try c.backup(id: id, op)!
            }
        }
    }

    /// Records a running backup as complete with its figures; `consistency`,
    /// when given, replaces the one recorded at the start (a converge backup
    /// learns its point in time at the end). Refused unless the backup is running.
    @discardableResult
    public func completeBackup(id: String, figures: BackupFigures, consistency: Consistency? = nil,
                               at time: Date = Date()) throws(CatalogError) -> BackupRecord {
        let op = "record backup '\(id)' as complete"
        let digest = try figures.imageDigest.map { d throws(CatalogError) in try Self.normalizedDigest(d, path, op) }
        return try locked { c throws(CatalogError) in
            try c.transaction(op) { () throws(CatalogError) in
                try c.checkFinishing(id, as: .complete, op)
                try c.run("""
                    UPDATE backups SET status = 'complete', error = NULL, finished_at = ?, bytes_read = ?,
                        bytes_written = ?, image_size = ?, image_digest = ?, consistency = coalesce(?, consistency)
                    WHERE id = ?
                    """, [.int(Timestamp.milliseconds(time)), .int(figures.bytesRead), .int(figures.bytesWritten),
                          .int(figures.imageSize), .text(digest), .text(consistency?.rawValue), .text(id)], op)
                return try c.backup(id: id, op)!
            }
        }
    }

    /// Records a running backup as `failed` or `cancelled` with the reason,
    /// and with how far the copy got when `figures` is given. Refused unless
    /// the backup is running, or for any other status.
    @discardableResult
    public func failBackup(id: String, status: BackupStatus = .failed, error: String, figures: BackupFigures? = nil,
                           at time: Date = Date()) throws(CatalogError) -> BackupRecord {
        let op = "record backup '\(id)' as \(status.rawValue)"
        guard status == .failed || status == .cancelled else {
            throw CatalogError(.invalidRecord, path: path, operation: op,
                               reason: "a backup that did not complete is 'failed' or 'cancelled', not '\(status.rawValue)'")
        }
        return try locked { c throws(CatalogError) in
            try c.transaction(op) { () throws(CatalogError) in
                try c.checkFinishing(id, as: status, op)
                try c.run("""
                    UPDATE backups SET status = ?, error = ?, finished_at = ?,
                        bytes_read = coalesce(?, bytes_read), bytes_written = coalesce(?, bytes_written)
                    WHERE id = ?
                    """, [.text(status.rawValue), .text(error), .int(Timestamp.milliseconds(time)),
                          .int(figures?.bytesRead), .int(figures?.bytesWritten), .text(id)], op)
                return try c.backup(id: id, op)!
            }
        }
    }

    /// Marks every backup still `running` as `failed` with `interruptedError`
    /// and returns them. ringbackd calls this when it starts: no backup runs
    /// then, so a `running` record is one a killed daemon left behind, and its
    /// image must never be offered for restore.
    @discardableResult
    public func markInterrupted(at time: Date = Date()) throws(CatalogError) -> [BackupRecord] {
        try locked { c throws(CatalogError) in
            let op = "mark interrupted backups as failed"
            return try c.transaction(op) { () throws(CatalogError) in
                let ids = try c.query("SELECT id FROM backups WHERE status = 'running' ORDER BY seq", [], op) {
                    $0.text(0) ?? ""
                }
                try c.run("UPDATE backups SET status = 'failed', error = ?, finished_at = ? WHERE status = 'running'",
                          [.text(Self.interruptedError), .int(Timestamp.milliseconds(time))], op)
                let all = try c.backups(device: nil, op)
                return all.filter { ids.contains($0.id) }
            }
        }
    }

    /// The backups of `device` (or of every device) in the order they started,
    /// each with `restorable` worked out from its whole chain. Without
    /// `includingSupersededFailures`, failed and cancelled backups followed by
    /// a complete backup of the same device are left out, and so are backups
    /// that chain maintenance retired (see `BackupListing.defaultView`).
    public func backups(device: String? = nil, includingSupersededFailures: Bool = true) throws(CatalogError)
        -> [BackupRecord] {
        let all = try locked { c throws(CatalogError) in try c.backups(device: device, "list backups") }
        return includingSupersededFailures ? all : BackupListing.defaultView(all)
    }

    /// The backup with this id, or nil.
    public func backup(id: String) throws(CatalogError) -> BackupRecord? {
        try locked { c throws(CatalogError) in try c.backup(id: id, "read backup '\(id)'") }
    }

    /// The newest backup that wrote `image`, or nil: how the daemon finds the
    /// parent of an incremental from the previous image's path.
    public func backup(image: String) throws(CatalogError) -> BackupRecord? {
        try locked { c throws(CatalogError) in
            let op = "find the backup of image \(image)"
            let ids = try c.query("SELECT id FROM backups WHERE image = ? ORDER BY seq DESC LIMIT 1",
                                  [.text(image)], op) { $0.text(0) ?? "" }
            return try ids.first.flatMap { id throws(CatalogError) in try c.backup(id: id, op) }
        }
    }

    /// Lower-case hex, or an error naming the bad digest.
    static func normalizedDigest(_ digest: String, _ path: String, _ op: String) throws(CatalogError) -> String {
        let lower = digest.lowercased()
        guard !lower.isEmpty, lower.count % 2 == 0, lower.allSatisfy({ $0.isHexDigit && $0.isASCII }) else {
            throw CatalogError(.invalidRecord, path: path, operation: op,
                               reason: "the image digest '\(digest)' is not an even number of hex digits")
        }
        return lower
    }
}
