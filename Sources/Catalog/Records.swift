import Foundation

/// What the daemon knows when a backup starts: the argument of `Catalog.beginBackup`.
public struct BackupStart: Sendable, Equatable {
    /// The id to record; nil lets the catalog assign the next `b-<n>`.
    public var id: String?
    public var jobID: String?
    public var device: String
    /// The chain folder the image is written into, when it is one.
    public var chain: String?
    public var kind: BackupKind
    public var sync: SyncMode
    public var bitmap: String?
    public var image: String
    public var format: String
    public var consistency: Consistency
    /// The backup whose image an incremental builds on; nil for a full backup.
    public var parentID: String?
    public var startedAt: Date

    /// A backup about to start. `sync` defaults to the kind's own mode (`full`
    /// for a full backup, `incremental` for an incremental).
    public init(id: String? = nil, jobID: String? = nil, device: String, chain: String? = nil, kind: BackupKind,
                sync: SyncMode? = nil, bitmap: String? = nil, image: String, format: String = "qcow2",
                consistency: Consistency = .crashInconsistent, parentID: String? = nil, startedAt: Date = Date()) {
        self.id = id
        self.jobID = jobID
        self.device = device
        self.chain = chain
        self.kind = kind
        self.sync = sync ?? (kind == .full ? .full : .incremental)
        self.bitmap = bitmap
        self.image = image
        self.format = format
        self.consistency = consistency
        self.parentID = parentID
        self.startedAt = startedAt
    }
}

/// What a finished copy measured: the figures `completeBackup` (and, as far as
/// the copy got, `failBackup`) records.
public struct BackupFigures: Sendable, Equatable {
    public var bytesRead: UInt64
    public var bytesWritten: UInt64
    /// The image's size on disk.
    public var imageSize: UInt64?
    /// Hex digest of the whole image (lower or upper case; stored lower case).
    public var imageDigest: String?

    /// The figures of one copy.
    public init(bytesRead: UInt64, bytesWritten: UInt64, imageSize: UInt64? = nil, imageDigest: String? = nil) {
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
        self.imageSize = imageSize
        self.imageDigest = imageDigest
    }
}

/// A device the catalog has seen, by path.
public struct DeviceRecord: Sendable, Equatable {
    public var path: String
    /// The device identity string (DESIGN §5), when the daemon recorded one.
    public var identity: String?
    public var size: UInt64?
    public var firstSeen: Date
    public var lastSeen: Date
}

/// A dirty bitmap the catalog knows of, by device and name.
public struct BitmapRecord: Sendable, Equatable {
    public var device: String
    public var name: String
    public var granularity: UInt64
    public var persistent: Bool
    public var created: Date
}

/// A chain folder: a full backup and the incrementals built on it.
public struct ChainRecord: Sendable, Equatable {
    public var id: Int64
    public var device: String
    public var directory: String
    public var created: Date
}
