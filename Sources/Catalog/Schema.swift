/// The catalog's tables and how a file moves from any older version to the
/// newest. Version 0 is a file without the `schema_version` table (new or
/// empty); migration `n` takes a file from version n to n + 1. Migrations are
/// only ever appended: a released one is never edited, because files out in
/// the field were made by it.
enum Schema {
    static let migrations: [String] = [version1]

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
            try run("DELETE FROM schema_version", [], "record the schema version")
            try run("INSERT INTO schema_version (version, migrated_at) VALUES (?, ?)",
                    [.int(Schema.current), .int(now)], "record the schema version")
        }
    }
}
