import Foundation

// The statements behind the backup calls of `Catalog`, run with its lock held.
extension Connection {
    /// A full backup has no parent; an incremental's parent is a recorded
    /// backup of the same device.
    func checkParent(of start: BackupStart, _ op: String) throws(CatalogError) {
        guard let parent = start.parentID else { return }
        guard start.kind == .incremental else {
            throw CatalogError(.invalidRecord, path: path, operation: op,
                               reason: "a full backup has no parent, but '\(parent)' was given")
        }
        let devices = try query("SELECT device FROM backups WHERE id = ?", [.text(parent)], op) { $0.text(0) ?? "" }
        guard let device = devices.first else {
            throw CatalogError(.invalidRecord, path: path, operation: op,
                               reason: "parent backup '\(parent)' is not in the catalog")
        }
        guard device == start.device else {
            throw CatalogError(.invalidRecord, path: path, operation: op,
                               reason: "parent backup '\(parent)' is of \(device), not \(start.device)")
        }
    }

    /// The `seq` and id of a new backup: the caller's id (with SQLite choosing
    /// seq), or `b-<n>` for the next n that sqlite_sequence has not handed out
    /// and no caller's id has taken. Call inside a transaction.
    func allocateID(_ requested: String?, _ op: String) throws(CatalogError) -> (Int64?, String) {
        func taken(_ id: String) throws(CatalogError) -> Bool {
            try !query("SELECT 1 FROM backups WHERE id = ?", [.text(id)], op) { _ in () }.isEmpty
        }
        if let requested {
            guard !requested.isEmpty else {
                throw CatalogError(.invalidRecord, path: path, operation: op, reason: "a backup id cannot be empty")
            }
            if try taken(requested) {
                throw CatalogError(.alreadyExists, path: path, operation: op,
                                   reason: "backup '\(requested)' already exists")
            }
            return (nil, requested)
        }
        let last = try query("SELECT seq FROM sqlite_sequence WHERE name = 'backups'", [], op) { $0.int(0) ?? 0 }
        var n = (last.first ?? 0) + 1
        while try taken("b-\(n)") { n += 1 }
        return (n, "b-\(n)")
    }

    /// Throws unless backup `id` exists and may move to `next` (only a running
    /// backup finishes; `BackupStatus.successors` is the table).
    func checkFinishing(_ id: String, as next: BackupStatus, _ op: String) throws(CatalogError) {
        let statuses = try query("SELECT status FROM backups WHERE id = ?", [.text(id)], op) { $0.text(0) ?? "" }
        guard let raw = statuses.first else {
            throw CatalogError(.notFound, path: path, operation: op, reason: "Backup '\(id)' not found")
        }
        let status = try parse(BackupStatus.self, raw, "status", op)
        guard status.successors.contains(next) else {
            throw CatalogError(.notRunning, path: path, operation: op,
                               reason: "backup '\(id)' is already \(status.rawValue), not running")
        }
    }

    /// The backup with this id, with its chain worked out.
    func backup(id: String, _ op: String) throws(CatalogError) -> BackupRecord? {
        // Parents are always of the same device, so the device's backups hold
        // the whole chain.
        let devices = try query("SELECT device FROM backups WHERE id = ?", [.text(id)], op) { $0.text(0) ?? "" }
        guard let device = devices.first else { return nil }
        return try backups(device: device, op).first { $0.id == id }
    }

    /// The backups of `device` (or of all devices) in start order, each with
    /// `incompleteAncestor` filled in.
    func backups(device: String?, _ op: String) throws(CatalogError) -> [BackupRecord] {
        let records = try query("""
            SELECT b.id, b.job_id, b.device, b.chain_id, c.directory, b.kind, b.sync, b.bitmap, b.image, b.format,
                   b.status, b.error, b.consistency, b.started_at, b.finished_at, b.bytes_read, b.bytes_written,
                   b.image_size, b.image_digest, b.parent_id, b.merged_into, b.retired_at
            FROM backups b LEFT JOIN chains c ON c.id = b.chain_id
            WHERE ?1 IS NULL OR b.device = ?1
            ORDER BY b.seq
            """, [.text(device)], op) { r throws(CatalogError) in try backupRecord(r, op) }
        return Self.resolvingAncestry(records)
    }

    /// Fills in each record's nearest ancestor that is not complete, in one
    /// pass: a parent always started (and so is listed) before its children,
    /// because the parent must be recorded when the child begins.
    static func resolvingAncestry(_ records: [BackupRecord]) -> [BackupRecord] {
        var byID: [String: BackupRecord] = [:]
        var out: [BackupRecord] = []
        out.reserveCapacity(records.count)
        for var r in records {
            if let parentID = r.parentID {
                if let parent = byID[parentID] {
                    // A merged parent's data is still the base its child builds on.
                    let whole = parent.status == .complete || parent.status == .merged
                    r.incompleteAncestor = whole ? parent.incompleteAncestor : parent.id
                } else {
                    r.incompleteAncestor = parentID
                }
            }
            byID[r.id] = r
            out.append(r)
        }
        return out
    }

    private func backupRecord(_ r: Row, _ op: String) throws(CatalogError) -> BackupRecord {
        func unsigned(_ i: Int32) -> UInt64? { r.int(i).map { UInt64(max(0, $0)) } }
        return BackupRecord(
            id: r.text(0) ?? "", jobID: r.text(1), device: r.text(2) ?? "", chainID: r.int(3), chain: r.text(4),
            kind: try parse(BackupKind.self, r.text(5), "kind", op),
            sync: try parse(SyncMode.self, r.text(6), "sync", op),
            bitmap: r.text(7), image: r.text(8) ?? "", format: r.text(9) ?? "",
            status: try parse(BackupStatus.self, r.text(10), "status", op),
            error: r.text(11), consistency: Consistency(rawValue: r.text(12) ?? Consistency.crashInconsistent.rawValue),
            startedAt: Timestamp.date(milliseconds: r.int(13) ?? 0),
            finishedAt: r.int(14).map(Timestamp.date(milliseconds:)),
            bytesRead: unsigned(15), bytesWritten: unsigned(16), imageSize: unsigned(17), imageDigest: r.text(18),
            parentID: r.text(19), mergedInto: r.text(20), retiredAt: r.int(21).map(Timestamp.date(milliseconds:)))
    }

    /// A column's text as one of our enums; the schema's CHECK constraints
    /// keep other values out, so one here means the file was edited by hand.
    private func parse<E: RawRepresentable>(_: E.Type, _ raw: String?, _ column: String, _ op: String)
        throws(CatalogError) -> E where E.RawValue == String {
        guard let raw, let value = E(rawValue: raw) else {
            throw CatalogError(.sqlite, path: path, operation: op,
                               reason: "backups.\(column) holds '\(raw ?? "NULL")', which this ringback does not know")
        }
        return value
    }
}
