import Foundation

/// A catalog operation that failed: which catalog file, what was being done,
/// and why — SQLite's own message and result code when SQLite refused.
public struct CatalogError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What went wrong, as a struct over a private enum so that new cases do not break callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case sqlite = "sqlite"
            case notFound = "not found"
            case alreadyExists = "already exists"
            case notRunning = "not running"
            case invalidRecord = "invalid record"
            case newerSchema = "newer schema"
            case readOnly = "read-only"
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// SQLite returned an error; `sqliteCode` holds its result code.
        public static let sqlite = Code(.sqlite)
        /// No backup (or bitmap) with that id or name.
        public static let notFound = Code(.notFound)
        /// `beginBackup` with an id the catalog already holds.
        public static let alreadyExists = Code(.alreadyExists)
        /// Completing or failing a backup that already finished.
        public static let notRunning = Code(.notRunning)
        /// A record that breaks the catalog's rules (a full backup with a parent,
        /// a digest that is not hex, a parent on another device).
        public static let invalidRecord = Code(.invalidRecord)
        /// The file was migrated by a newer ringback than this one.
        public static let newerSchema = Code(.newerSchema)
        /// The file or its directory cannot be written.
        public static let readOnly = Code(.readOnly)

        public var description: String { base.rawValue }
    }

    public let code: Code
    /// The catalog file.
    public let path: String
    /// What was being done, e.g. `record backup 'b-3' as complete`.
    public let operation: String
    /// Why it failed: SQLite's message with its result code's name, or ours.
    public let reason: String
    /// SQLite's extended result code when SQLite refused, nil otherwise.
    public let sqliteCode: Int32?

    init(_ code: Code, path: String, operation: String, reason: String, sqliteCode: Int32? = nil) {
        self.code = code
        self.path = path
        self.operation = operation
        self.reason = reason
        self.sqliteCode = sqliteCode
    }

    /// `catalog /var/lib/ringback/catalog.db: cannot open: file is not a database (SQLITE_NOTADB)`.
    public var description: String { "catalog \(path): cannot \(operation): \(reason)" }
}
