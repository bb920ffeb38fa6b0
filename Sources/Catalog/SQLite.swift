import CSQLite
import Foundation

// The one place the Catalog module calls SQLite: open, prepare, bind, step,
// finalize. Everything above it passes SQL text that holds no values (values
// travel as bound parameters) and gets a CatalogError that carries the
// catalog's path, what was being done, and sqlite3_errmsg's text.

/// A value bound to a `?` parameter or read from a column.
enum SQLValue {
    case null
    case int(Int64)
    case text(String)

    static func text(_ s: String?) -> SQLValue { s.map(SQLValue.text) ?? .null }
    static func int(_ i: Int64?) -> SQLValue { i.map(SQLValue.int) ?? .null }
    static func int(_ u: UInt64?) -> SQLValue { u.map { .int(Int64(clamping: $0)) } ?? .null }
    static func bool(_ b: Bool) -> SQLValue { .int(b ? 1 : 0) }
}

/// One result row while its statement is being stepped; valid only inside the
/// closure that receives it.
struct Row {
    fileprivate let statement: OpaquePointer

    /// Column `i` (from 0) as an integer, nil when it is NULL.
    func int(_ i: Int32) -> Int64? {
        sqlite3_column_type(statement, i) == SQLITE_NULL ? nil : sqlite3_column_int64(statement, i)
    }

    /// Column `i` (from 0) as text, nil when it is NULL.
    func text(_ i: Int32) -> String? {
        guard let p = sqlite3_column_text(statement, i) else { return nil }
        return String(cString: p)
    }
}

/// One open SQLite connection. Not thread-safe by itself: `Catalog` holds it
/// under a lock, and the connection is opened with SQLITE_OPEN_NOMUTEX so that
/// SQLite does not take a second lock of its own.
final class Connection {
    let path: String
    private let db: OpaquePointer

    /// Opens (creating when absent) the file for reading and writing.
    init(path: String) throws(CatalogError) {
        self.path = path
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            // Even a failed open returns a handle (unless memory ran out) that
            // holds the message and must be closed.
            let error = Self.error(handle, rc, path: path, operation: "open", osReason: Self.creationProblem(path))
            sqlite3_close_v2(handle)
            throw error
        }
        db = handle
        // SQLITE_OPEN_READWRITE quietly falls back to read-only when the
        // operating system refuses writing; a catalog that cannot record
        // backups is useless to ringbackd, so say so now.
        if sqlite3_db_readonly(db, "main") == 1 {
            sqlite3_close_v2(db)
            throw CatalogError(.readOnly, path: path, operation: "open",
                               reason: "the file is read-only (or on a read-only file system)")
        }
    }

    deinit { sqlite3_close_v2(db) }

    /// How long a statement waits for another connection's write lock.
    func setBusyTimeout(milliseconds: Int32) { sqlite3_busy_timeout(db, milliseconds) }

    /// Runs SQL text that binds no values: pragmas and the schema's DDL.
    func execute(script: String, _ operation: String) throws(CatalogError) {
        let rc = sqlite3_exec(db, script, nil, nil, nil)
        guard rc == SQLITE_OK else { throw error(rc, operation) }
    }

    /// Runs one statement with bound values; returns the number of rows it changed.
    @discardableResult
    func run(_ sql: String, _ values: [SQLValue] = [], _ operation: String) throws(CatalogError) -> Int {
        _ = try query(sql, values, operation) { _ in () }
        return Int(sqlite3_changes(db))
    }

    /// Runs one statement with bound values and maps every result row.
    func query<T>(_ sql: String, _ values: [SQLValue] = [], _ operation: String,
                  _ map: (Row) throws(CatalogError) -> T) throws(CatalogError) -> [T] {
        var statement: OpaquePointer?
        let rc = sqlite3_prepare_v2(db, sql, -1, &statement, nil)
        guard rc == SQLITE_OK, let statement else { throw error(rc, operation) }
        defer { sqlite3_finalize(statement) }
        for (i, value) in values.enumerated() {
            let index = Int32(i + 1)
            let bound: Int32
            switch value {
            case .null: bound = sqlite3_bind_null(statement, index)
            case .int(let n): bound = sqlite3_bind_int64(statement, index, n)
            case .text(let s): bound = sqlite3_bind_text(statement, index, s, -1, csqlite_transient())
            }
            guard bound == SQLITE_OK else { throw error(bound, operation) }
        }
        var rows: [T] = []
        while true {
            let step = sqlite3_step(statement)
            if step == SQLITE_DONE { return rows }
            guard step == SQLITE_ROW else { throw error(step, operation) }
            rows.append(try map(Row(statement: statement)))
        }
    }

    /// Runs `body` inside BEGIN IMMEDIATE … COMMIT, rolling back when it throws.
    /// IMMEDIATE takes the write lock up front (waiting out the busy timeout),
    /// so a read-then-write in `body` cannot lose a race to another connection.
    func transaction<T>(_ operation: String, _ body: () throws(CatalogError) -> T) throws(CatalogError) -> T {
        try execute(script: "BEGIN IMMEDIATE", operation)
        do throws(CatalogError) {
            let result = try body()
            try execute(script: "COMMIT", operation)
            return result
        } catch {
            sqlite3_exec(db, "ROLLBACK", nil, nil, nil)
            throw error
        }
    }

    /// A CatalogError for a failed SQLite call on this connection.
    func error(_ rc: Int32, _ operation: String) -> CatalogError {
        Self.error(db, rc, path: path, operation: operation)
    }

    /// `osReason`, when given, replaces the operating system's reason that
    /// SQLite recorded.
    private static func error(_ db: OpaquePointer?, _ rc: Int32, path: String, operation: String,
                              osReason: String? = nil) -> CatalogError {
        let code = db.map { sqlite3_extended_errcode($0) } ?? rc
        let message = db.flatMap { sqlite3_errmsg($0) }.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
        var detail = resultCodeName(code)
        // The operating system's reason matters for the errors that come from
        // it (a read-only directory, a missing folder, a full disk).
        let primary = code & 0xff
        if primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR || primary == SQLITE_READONLY {
            if let osReason {
                detail += "; \(osReason)"
            } else if let db, case let e = sqlite3_system_errno(db), e != 0 {
                detail += "; \(describe(errno: e))"
            }
        }
        return CatalogError(.sqlite, path: path, operation: operation, reason: "\(message) (\(detail))", sqliteCode: code)
    }

    /// Why a catalog file that does not exist cannot be created, or nil when it
    /// exists (or its folder looks writable). SQLite's own errno is no help
    /// here: after O_CREAT fails it retries read-only, and reports that
    /// attempt's ENOENT even when the folder is on a read-only file system.
    private static func creationProblem(_ path: String) -> String? {
        guard access(path, F_OK) != 0 else { return nil }
        let folder = (path as NSString).deletingLastPathComponent
        guard access(folder.isEmpty ? "." : folder, W_OK | X_OK) != 0 else { return nil }
        let e = errno
        return "cannot create it in \(folder): \(describe(errno: e))"
    }
}

/// The name of a result code's primary code, e.g. SQLITE_NOTADB.
private func resultCodeName(_ code: Int32) -> String {
    let names: [Int32: String] = [
        SQLITE_ERROR: "SQLITE_ERROR", SQLITE_INTERNAL: "SQLITE_INTERNAL", SQLITE_PERM: "SQLITE_PERM",
        SQLITE_ABORT: "SQLITE_ABORT", SQLITE_BUSY: "SQLITE_BUSY", SQLITE_LOCKED: "SQLITE_LOCKED",
        SQLITE_NOMEM: "SQLITE_NOMEM", SQLITE_READONLY: "SQLITE_READONLY", SQLITE_INTERRUPT: "SQLITE_INTERRUPT",
        SQLITE_IOERR: "SQLITE_IOERR", SQLITE_CORRUPT: "SQLITE_CORRUPT", SQLITE_FULL: "SQLITE_FULL",
        SQLITE_CANTOPEN: "SQLITE_CANTOPEN", SQLITE_PROTOCOL: "SQLITE_PROTOCOL", SQLITE_SCHEMA: "SQLITE_SCHEMA",
        SQLITE_TOOBIG: "SQLITE_TOOBIG", SQLITE_CONSTRAINT: "SQLITE_CONSTRAINT", SQLITE_MISMATCH: "SQLITE_MISMATCH",
        SQLITE_MISUSE: "SQLITE_MISUSE", SQLITE_NOLFS: "SQLITE_NOLFS", SQLITE_AUTH: "SQLITE_AUTH",
        SQLITE_RANGE: "SQLITE_RANGE", SQLITE_NOTADB: "SQLITE_NOTADB",
    ]
    return names[code & 0xff] ?? "SQLite result code \(code)"
}

/// `Read-only file system, EROFS`.
private func describe(errno e: Int32) -> String { "\(String(cString: strerror(e))), \(errnoName(e))" }

/// The symbolic name of the errno values a catalog file can meet.
private func errnoName(_ e: Int32) -> String {
    let names: [Int32: String] = [
        EACCES: "EACCES", EPERM: "EPERM", EROFS: "EROFS", ENOENT: "ENOENT", ENOTDIR: "ENOTDIR",
        EISDIR: "EISDIR", ENOSPC: "ENOSPC", EDQUOT: "EDQUOT", EIO: "EIO", EBUSY: "EBUSY", ENOLCK: "ENOLCK",
    ]
    return names[e] ?? "errno \(e)"
}
