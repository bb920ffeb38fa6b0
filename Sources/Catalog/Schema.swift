/// The catalog's tables and how a file moves from any older version to the
/// newest. Version 0 is a file without the `schema_version` table (new or
/// empty); migration `n` takes a file from version n to n + 1. Migrations are
/// only ever appended: a released one is never edited, because files out in
/// the field were made by it.
enum Schema {
    static let migrations: [String] = [version1, version2]

    /// The version this build writes.
    static var current: Int64 { Int64(migrations.count) }

    /// Times are milliseconds since 1970 (UTC). Backups keep `seq`, an
    /// AUTOINCREMENT key, so that their order is the order they started in and
    /// a `b-<n>` id is never handed out twice, even after rows are deleted.
    private static let version1 = """
        CREATE TABLE schema_version (
            version     INTEGER NOT NULL,
            migrated_at INTEGER NOT NULL
        );
        CREATE TABLE devices (
            path       TEXT PRIMARY KEY,
            identity   TEXT,
            size       INTEGER,
            first_seen INTEGER NOT NULL,
            last_seen  INTEGER NOT NULL
        );
        CREATE TABLE bitmaps (
            device      TEXT NOT NULL REFERENCES devices(path),
            name        TEXT NOT NULL,
            granularity INTEGER NOT NULL,
            persistent  INTEGER NOT NULL,
            created     INTEGER NOT NULL,
            PRIMARY KEY (device, name)
        );
        CREATE TABLE chains (
            id        INTEGER PRIMARY KEY AUTOINCREMENT,
            device    TEXT NOT NULL REFERENCES devices(path),
            directory TEXT NOT NULL UNIQUE,
            created   INTEGER NOT NULL
        );
        CREATE TABLE backups (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            id            TEXT NOT NULL UNIQUE,
            job_id        TEXT,
            device        TEXT NOT NULL REFERENCES devices(path),
            chain_id      INTEGER REFERENCES chains(id),
            kind          TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
            sync          TEXT NOT NULL CHECK (sync IN ('full', 'incremental', 'bitmap')),
            bitmap        TEXT,
            image         TEXT NOT NULL,
            format        TEXT NOT NULL,
            status        TEXT NOT NULL CHECK (status IN ('running', 'complete', 'failed', 'cancelled')),
            error         TEXT,
            consistency   TEXT NOT NULL DEFAULT 'crash-inconsistent',
            started_at    INTEGER NOT NULL,
            finished_at   INTEGER,
            bytes_read    INTEGER,
            bytes_written INTEGER,
            image_size    INTEGER,
            image_digest  TEXT,
            parent_id     TEXT REFERENCES backups(id),
            CHECK (kind = 'incremental' OR parent_id IS NULL)
        );
        CREATE INDEX backups_by_device ON backups(device, seq);
        CREATE INDEX backups_by_status ON backups(status);
        CREATE INDEX backups_by_image ON backups(image);
        """

    /// Chain maintenance: a backup's point in time can be merged into a later
    /// one (`merged`, with `merged_into` naming the backup that now holds the
    /// image) or removed with its chain (`removed`); `retired_at` says when.
    /// SQLite cannot change a CHECK constraint in place, so the table is
    /// rebuilt (the migration runs with foreign keys off and checks them
    /// before it commits), keeping `seq` and the AUTOINCREMENT counter.
    private static let version2 = """
        CREATE TABLE backups_v2 (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            id            TEXT NOT NULL UNIQUE,
            job_id        TEXT,
            device        TEXT NOT NULL REFERENCES devices(path),
            chain_id      INTEGER REFERENCES chains(id),
            kind          TEXT NOT NULL CHECK (kind IN ('full', 'incremental')),
            sync          TEXT NOT NULL CHECK (sync IN ('full', 'incremental', 'bitmap')),
            bitmap        TEXT,
            image         TEXT NOT NULL,
            format        TEXT NOT NULL,
            status        TEXT NOT NULL
                          CHECK (status IN ('running', 'complete', 'failed', 'cancelled', 'merged', 'removed')),
            error         TEXT,
            consistency   TEXT NOT NULL DEFAULT 'crash-inconsistent',
            started_at    INTEGER NOT NULL,
            finished_at   INTEGER,
            bytes_read    INTEGER,
            bytes_written INTEGER,
            image_size    INTEGER,
            image_digest  TEXT,
            parent_id     TEXT REFERENCES backups(id),
            merged_into   TEXT REFERENCES backups(id),
            retired_at    INTEGER,
            CHECK (kind = 'incremental' OR parent_id IS NULL),
            CHECK (merged_into IS NULL OR status = 'merged')
        );
        INSERT INTO backups_v2 (seq, id, job_id, device, chain_id, kind, sync, bitmap, image, format, status, error,
                                consistency, started_at, finished_at, bytes_read, bytes_written, image_size,
                                image_digest, parent_id)
            SELECT seq, id, job_id, device, chain_id, kind, sync, bitmap, image, format, status, error,
                   consistency, started_at, finished_at, bytes_read, bytes_written, image_size,
                   image_digest, parent_id
            FROM backups ORDER BY seq;
        INSERT INTO sqlite_sequence (name, seq)
            SELECT 'backups_v2', seq FROM sqlite_sequence
            WHERE name = 'backups' AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'backups_v2');
        UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'backups'), 0))
            WHERE name = 'backups_v2';
        DROP TABLE backups;
        ALTER TABLE backups_v2 RENAME TO backups;
        CREATE INDEX backups_by_device ON backups(device, seq);
        CREATE INDEX backups_by_status ON backups(status);
        CREATE INDEX backups_by_image ON backups(image);
        """
}

extension Connection {
    /// The file's schema version: 0 when it has no `schema_version` table.
    func schemaVersion() throws(CatalogError) -> Int64 {
        let tables = try query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                               [.text("schema_version")], "read the schema version") { $0.int(0) ?? 0 }
        guard tables.first == 1 else { return 0 }
        let versions = try query("SELECT max(version) FROM schema_version", [], "read the schema version") { $0.int(0) }
        return (versions.first ?? nil) ?? 0
    }

    /// Brings the file to `Schema.current` in one transaction, so that a crash
    /// mid-way leaves the old version whole. Refuses a file from a newer ringback.
    func migrate(now: Int64) throws(CatalogError) {
        // A migration may rebuild a table that others refer to; SQLite's way
        // (lang_altertable.html) is foreign keys off, which only takes effect
        // outside a transaction, and a foreign key check before the commit.
        try execute(script: "PRAGMA foreign_keys = OFF", "migrate the schema")
        defer { try? execute(script: "PRAGMA foreign_keys = ON", "migrate the schema") }
        try transaction("migrate the schema") { () throws(CatalogError) in
            let found = try schemaVersion()
            if found > Schema.current {
                throw CatalogError(.newerSchema, path: path, operation: "open",
                                   reason: "schema version \(found) was written by a newer ringback; "
                                       + "this one knows versions up to \(Schema.current)")
            }
            guard found < Schema.current else { return }
            for version in found..<Schema.current {
                try execute(script: Schema.migrations[Int(version)],
                            "migrate the schema from version \(version) to \(version + 1)")
            }
            let broken = try query("PRAGMA foreign_key_check", [], "check foreign keys after the migration") {
                "\($0.text(0) ?? "?") row \($0.int(1) ?? 0) refers to a missing \($0.text(2) ?? "?")"
            }
            if let first = broken.first {
                throw CatalogError(.sqlite, path: path, operation: "migrate the schema",
                                   reason: "after the migration \(first) (\(broken.count) such rows); nothing was changed")
            }
            try run("DELETE FROM schema_version", [], "record the schema version")
            try run("INSERT INTO schema_version (version, migrated_at) VALUES (?, ?)",
                    [.int(Schema.current), .int(now)], "record the schema version")
        }
    }
}
