import Foundation
import Synchronization

/// The backup catalog (DESIGN §8): devices, dirty bitmaps, chains and backups
/// in one SQLite file, by default `<state-dir>/catalog.db`.
///
/// One connection serves every thread: each call takes a lock for as long as
/// it uses the connection, so calls never interleave inside a transaction.
/// The file is in WAL mode, so readers in other processes (the `sqlite3` shell,
/// a second catalog) do not block the daemon's writes, and a busy timeout makes
/// a writer wait for another process's write lock instead of failing at once.
public final class Catalog: Sendable {
    /// The catalog file.
    public let path: String
    private let connection: Mutex<Connection>

    /// The catalog's file name inside the state directory.
    public static let fileName = "catalog.db"

    /// `<stateDirectory>/catalog.db`.
    public static func defaultPath(stateDirectory: String) -> String {
        (stateDirectory as NSString).appendingPathComponent(fileName)
    }

    /// Opens the catalog at `<stateDirectory>/catalog.db`; see `init(path:busyTimeout:)`.
    public convenience init(stateDirectory: String) throws(CatalogError) {
        try self.init(path: Self.defaultPath(stateDirectory: stateDirectory))
    }

    /// Opens the catalog file, creating it when absent, and migrates it to this
    /// build's schema. Throws when the file is not a SQLite database, is
    /// damaged, is read-only, or was written by a newer ringback; the error
    /// names the file. The directory must exist.
    public init(path: String, busyTimeout: Duration = .seconds(5)) throws(CatalogError) {
        self.path = path
        let c = try Connection(path: path)
        let ms = busyTimeout.components.seconds * 1000 + busyTimeout.components.attoseconds / 1_000_000_000_000_000
        c.setBusyTimeout(milliseconds: Int32(clamping: ms))
        // These first statements are the ones that read the file, so a file
        // that is not a database (or is damaged) fails here, as an open error.
        try c.execute(script: "PRAGMA foreign_keys = ON", "open")
        let mode = try c.query("PRAGMA journal_mode = WAL", [], "open") { $0.text(0) }
        guard mode.first == "wal" else {
            throw CatalogError(.sqlite, path: path, operation: "open",
                               reason: "the file cannot use WAL journal mode (it stayed in '\((mode.first ?? nil) ?? "?")' mode)")
        }
        // FULL: a backup recorded as complete stays recorded across a power
        // loss, not only across a crash of ringbackd.
        try c.execute(script: "PRAGMA synchronous = FULL", "open")
        try c.migrate(now: Timestamp.milliseconds(Date()))
        connection = Mutex(c)
    }

    /// Runs `body` with the connection, holding the lock.
    func locked<T: Sendable>(_ body: (Connection) throws(CatalogError) -> T) throws(CatalogError) -> T {
        try connection.withLock { (c: inout Connection) throws(CatalogError) -> T in try body(c) }
    }

    /// The schema version of the open file (the newest this build knows).
    public func schemaVersion() throws(CatalogError) -> Int64 {
        try locked { c throws(CatalogError) in try c.schemaVersion() }
    }

    // MARK: devices

    /// Records that `path` was seen (now) with this identity and size. The
    /// first call sets `firstSeen`; every call updates the rest.
    @discardableResult
    public func recordDevice(path: String, identity: String?, size: UInt64?, at time: Date = Date())
        throws(CatalogError) -> DeviceRecord {
        try locked { c throws(CatalogError) in
            let op = "record device \(path)"
            try c.run("""
                INSERT INTO devices (path, identity, size, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (path) DO UPDATE SET identity = excluded.identity, size = excluded.size,
                    last_seen = excluded.last_seen
                """, [.text(path), .text(identity), .int(size), .int(Timestamp.milliseconds(time)),
                      .int(Timestamp.milliseconds(time))], op)
            return try c.devices(path: path, op).first!
        }
    }

    /// The device recorded at `path`, if any.
    public func device(path: String) throws(CatalogError) -> DeviceRecord? {
        try locked { c throws(CatalogError) in try c.devices(path: path, "read device \(path)").first }
    }

    /// Every device recorded, by path.
    public func devices() throws(CatalogError) -> [DeviceRecord] {
        try locked { c throws(CatalogError) in try c.devices(path: nil, "list devices") }
    }

    // MARK: bitmaps

    /// Records a dirty bitmap (a new one, or new settings of one already recorded).
    @discardableResult
    public func recordBitmap(device: String, name: String, granularity: UInt64, persistent: Bool,
                             at time: Date = Date()) throws(CatalogError) -> BitmapRecord {
        try locked { c throws(CatalogError) in
            let op = "record bitmap '\(name)' on \(device)"
            try c.touchDevice(device, at: time, op)
            try c.run("""
                INSERT INTO bitmaps (device, name, granularity, persistent, created) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (device, name) DO UPDATE SET granularity = excluded.granularity,
                    persistent = excluded.persistent
                """, [.text(device), .text(name), .int(granularity), .bool(persistent),
                      .int(Timestamp.milliseconds(time))], op)
            return try c.bitmaps(device: device, op).first { $0.name == name }!
        }
    }

    /// Forgets a bitmap; returns false when the catalog did not hold it.
    @discardableResult
    public func removeBitmap(device: String, name: String) throws(CatalogError) -> Bool {
        try locked { c throws(CatalogError) in
            try c.run("DELETE FROM bitmaps WHERE device = ? AND name = ?", [.text(device), .text(name)],
                      "remove bitmap '\(name)' on \(device)") > 0
        }
    }

    /// The bitmaps recorded for `device` (or for every device), by device and name.
    public func bitmaps(device: String? = nil) throws(CatalogError) -> [BitmapRecord] {
        try locked { c throws(CatalogError) in try c.bitmaps(device: device, "list bitmaps") }
    }

    // MARK: chains

    /// The chain kept in `directory`, recorded now when it is new. A folder
    /// already recorded for another device is refused.
    @discardableResult
    public func recordChain(device: String, directory: String, at time: Date = Date()) throws(CatalogError)
        -> ChainRecord {
        try locked { c throws(CatalogError) in
            try c.transaction("record chain \(directory)") { () throws(CatalogError) in
                try c.chain(device: device, directory: directory, at: time, "record chain \(directory)")
            }
        }
    }

    /// The chains recorded for `device` (or for every device), oldest first.
    public func chains(device: String? = nil) throws(CatalogError) -> [ChainRecord] {
        try locked { c throws(CatalogError) in try c.chains(device: device, directory: nil, "list chains") }
    }
}

// The statements behind the device, bitmap and chain calls, run with the lock held.
extension Connection {
    func devices(path: String?, _ op: String) throws(CatalogError) -> [DeviceRecord] {
        try query("""
            SELECT path, identity, size, first_seen, last_seen FROM devices
            WHERE ?1 IS NULL OR path = ?1 ORDER BY path
            """, [.text(path)], op) { r in
            DeviceRecord(path: r.text(0) ?? "", identity: r.text(1), size: r.int(2).map { UInt64(max(0, $0)) },
                         firstSeen: Timestamp.date(milliseconds: r.int(3) ?? 0),
                         lastSeen: Timestamp.date(milliseconds: r.int(4) ?? 0))
        }
    }

    /// Makes sure `device` has a row (bitmaps, chains and backups refer to it)
    /// and marks it seen, leaving its identity and size as they were.
    func touchDevice(_ device: String, at time: Date, _ op: String) throws(CatalogError) {
        let ms = Timestamp.milliseconds(time)
        try run("""
            INSERT INTO devices (path, first_seen, last_seen) VALUES (?, ?, ?)
            ON CONFLICT (path) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)
            """, [.text(device), .int(ms), .int(ms)], op)
    }

    func bitmaps(device: String?, _ op: String) throws(CatalogError) -> [BitmapRecord] {
        try query("""
            SELECT device, name, granularity, persistent, created FROM bitmaps
            WHERE ?1 IS NULL OR device = ?1 ORDER BY device, name
            """, [.text(device)], op) { r in
            BitmapRecord(device: r.text(0) ?? "", name: r.text(1) ?? "", granularity: UInt64(max(0, r.int(2) ?? 0)),
                         persistent: r.int(3) == 1, created: Timestamp.date(milliseconds: r.int(4) ?? 0))
        }
    }

    func chains(device: String?, directory: String?, _ op: String) throws(CatalogError) -> [ChainRecord] {
        try query("""
            SELECT id, device, directory, created FROM chains
            WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR directory = ?2) ORDER BY id
            """, [.text(device), .text(directory)], op) { r in
            ChainRecord(id: r.int(0) ?? 0, device: r.text(1) ?? "", directory: r.text(2) ?? "",
                        created: Timestamp.date(milliseconds: r.int(3) ?? 0))
        }
    }

    /// The chain in `directory`, created when new; call inside a transaction.
    func chain(device: String, directory: String, at time: Date, _ op: String) throws(CatalogError) -> ChainRecord {
        if let existing = try chains(device: nil, directory: directory, op).first {
            guard existing.device == device else {
                throw CatalogError(.invalidRecord, path: path, operation: op,
                                   reason: "the chain folder \(directory) holds backups of \(existing.device), not \(device)")
            }
            return existing
        }
        try touchDevice(device, at: time, op)
        try run("INSERT INTO chains (device, directory, created) VALUES (?, ?, ?)",
                [.text(device), .text(directory), .int(Timestamp.milliseconds(time))], op)
        return try chains(device: nil, directory: directory, op).first!
    }
}
