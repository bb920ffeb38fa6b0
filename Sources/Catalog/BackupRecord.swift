import Foundation

/// Whether a backup holds the whole device or only what changed since its parent.
public enum BackupKind: String, Codable, Sendable, CaseIterable {
    case full, incremental
}

/// Which clusters the backup copied: QEMU's `sync` argument (DESIGN §9).
public enum SyncMode: String, Codable, Sendable, CaseIterable {
    case full, incremental, bitmap
}

/// Where a backup is in its life (DESIGN §8). Only `complete` backups can be
/// restored; the others never can.
///
/// Chain maintenance retires complete backups: `merged` when the backup's
/// point in time was folded into the next one of its chain (its data lives
/// on in that backup's image, so a backup built on it is still whole), and
/// `removed` when retention deleted its chain.
public enum BackupStatus: String, Codable, Sendable, CaseIterable {
    case running, complete, failed, cancelled, merged, removed

    /// The statuses a backup may move to from this one. A backup finishes once:
    /// running → complete, failed or cancelled; only a complete backup is then
    /// retired (merged or removed), and nothing leaves a retired state.
    public var successors: Set<BackupStatus> {
        switch self {
        case .running: [.complete, .failed, .cancelled]
        case .complete: [.merged, .removed]
        case .failed, .cancelled, .merged, .removed: []
        }
    }
}

/// The point in time a backup's image holds (DESIGN §11): a live copy without a
/// freeze or snapshot is `crash-inconsistent`, never called consistent.
/// Open-ended, so that a new method of quiescing does not need a schema change.
public struct Consistency: RawRepresentable, Codable, Hashable, Sendable, ExpressibleByStringLiteral,
    CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { rawValue = value }

    /// Copied live with nothing holding writes still: what a crash would leave.
    public static let crashInconsistent: Consistency = "crash-inconsistent"
    /// The filesystems stayed frozen for the whole copy.
    public static let frozen: Consistency = "frozen"
    /// Read from an LVM snapshot taken while frozen.
    public static let snapshot: Consistency = "snapshot"
    /// Copied live, then the rest copied during one short final freeze.
    public static let converge: Consistency = "converge"

    public var description: String { rawValue }

    public init(from decoder: Decoder) throws {
        rawValue = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }
}

/// One backup as the catalog holds it: what was copied from where to which
/// image, how it ended, and whether it can be restored. Encodes to the JSON
/// object `x-query-backups` returns, with QMP's kebab-case member names;
/// absent values are left out, as QMP replies leave out absent optionals.
public struct BackupRecord: Codable, Sendable, Equatable {
    /// `b-<n>`, or the id the daemon chose.
    public var id: String
    /// The job that ran the backup, when a job did.
    public var jobID: String?
    /// The device's path, e.g. `/dev/sdb`.
    public var device: String
    /// The chain the image belongs to (its folder), when it is in one.
    public var chainID: Int64?
    public var chain: String?
    public var kind: BackupKind
    public var sync: SyncMode
    /// The dirty bitmap an incremental or bitmap sync read.
    public var bitmap: String?
    /// The image file (or device) written.
    public var image: String
    /// `qcow2` or `raw`.
    public var format: String
    public var status: BackupStatus
    /// Why a failed or cancelled backup did not complete.
    public var error: String?
    public var consistency: Consistency
    public var startedAt: Date
    public var finishedAt: Date?
    public var bytesRead: UInt64?
    public var bytesWritten: UInt64?
    /// The image's size on disk when the backup completed.
    public var imageSize: UInt64?
    /// Lower-case hex digest of the whole image.
    public var imageDigest: String?
    /// The backup whose image this incremental builds on.
    public var parentID: String?
    /// The nearest backup up this one's parent chain that is not complete, or
    /// nil when every ancestor is. A merged ancestor is a whole link: its data
    /// is still the base of the chain. Filled in by the catalog when it reads.
    public var incompleteAncestor: String?
    /// For a merged backup: the backup whose image now holds the data (the
    /// incremental it was merged with, whose point in time lives on).
    public var mergedInto: String?
    /// When chain maintenance merged or removed the backup.
    public var retiredAt: Date?

    /// Creates a record; the catalog makes these, tests and formatters may too.
    public init(id: String, jobID: String? = nil, device: String, chainID: Int64? = nil, chain: String? = nil,
                kind: BackupKind, sync: SyncMode, bitmap: String? = nil, image: String, format: String = "qcow2",
                status: BackupStatus, error: String? = nil, consistency: Consistency = .crashInconsistent,
                startedAt: Date, finishedAt: Date? = nil, bytesRead: UInt64? = nil, bytesWritten: UInt64? = nil,
                imageSize: UInt64? = nil, imageDigest: String? = nil, parentID: String? = nil,
                incompleteAncestor: String? = nil, mergedInto: String? = nil, retiredAt: Date? = nil) {
        self.id = id
        self.jobID = jobID
        self.device = device
        self.chainID = chainID
        self.chain = chain
        self.kind = kind
        self.sync = sync
        self.bitmap = bitmap
        self.image = image
        self.format = format
        self.status = status
        self.error = error
        self.consistency = consistency
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.bytesRead = bytesRead
        self.bytesWritten = bytesWritten
        self.imageSize = imageSize
        self.imageDigest = imageDigest
        self.parentID = parentID
        self.incompleteAncestor = incompleteAncestor
        self.mergedInto = mergedInto
        self.retiredAt = retiredAt
    }

    /// Why this backup cannot be restored, or nil when it can: a backup that
    /// did not complete never can (DESIGN §8), nor can an incremental whose
    /// chain has a link that did not complete or is unknown to the catalog.
    public var notRestorableReason: String? {
        switch status {
        case .running: return "the backup is still running"
        case .failed: return "the backup failed"
        case .cancelled: return "the backup was cancelled"
        case .merged:
            return "its point in time was merged away by chain maintenance"
                + (mergedInto.map { " (its data is now part of backup '\($0)')" } ?? "")
        case .removed: return "its chain was removed by retention"
        case .complete: break
        }
        guard kind == .incremental else { return nil }
        guard parentID != nil else { return "the catalog has no parent backup for this incremental" }
        if let incompleteAncestor { return "backup '\(incompleteAncestor)' in its chain is not complete" }
        return nil
    }

    /// True when the image, with its chain, can be restored.
    public var restorable: Bool { notRestorableReason == nil }

    /// From start to finish; nil while running.
    public var duration: TimeInterval? { finishedAt.map { $0.timeIntervalSince(startedAt) } }

    enum CodingKeys: String, CodingKey {
        case id, jobID = "job-id", device, chainID = "chain-id", chain, kind, sync, bitmap, image, format, status
        case error, consistency, startedAt = "started-at", finishedAt = "finished-at", bytesRead = "bytes-read"
        case bytesWritten = "bytes-written", imageSize = "image-size", imageDigest = "image-digest"
        case parentID = "parent", incompleteAncestor = "incomplete-ancestor", restorable
        case mergedInto = "merged-into", retiredAt = "retired-at"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        jobID = try c.decodeIfPresent(String.self, forKey: .jobID)
        device = try c.decode(String.self, forKey: .device)
        chainID = try c.decodeIfPresent(Int64.self, forKey: .chainID)
        chain = try c.decodeIfPresent(String.self, forKey: .chain)
        kind = try c.decode(BackupKind.self, forKey: .kind)
        sync = try c.decode(SyncMode.self, forKey: .sync)
        bitmap = try c.decodeIfPresent(String.self, forKey: .bitmap)
        image = try c.decode(String.self, forKey: .image)
        format = try c.decode(String.self, forKey: .format)
        status = try c.decode(BackupStatus.self, forKey: .status)
        error = try c.decodeIfPresent(String.self, forKey: .error)
        consistency = try c.decodeIfPresent(Consistency.self, forKey: .consistency) ?? .crashInconsistent
        startedAt = try Timestamp.decode(c, .startedAt)
        finishedAt = try c.contains(.finishedAt) ? Timestamp.decode(c, .finishedAt) : nil
        bytesRead = try c.decodeIfPresent(UInt64.self, forKey: .bytesRead)
        bytesWritten = try c.decodeIfPresent(UInt64.self, forKey: .bytesWritten)
        imageSize = try c.decodeIfPresent(UInt64.self, forKey: .imageSize)
        imageDigest = try c.decodeIfPresent(String.self, forKey: .imageDigest)
        parentID = try c.decodeIfPresent(String.self, forKey: .parentID)
        incompleteAncestor = try c.decodeIfPresent(String.self, forKey: .incompleteAncestor)
        mergedInto = try c.decodeIfPresent(String.self, forKey: .mergedInto)
        retiredAt = try c.contains(.retiredAt) ? Timestamp.decode(c, .retiredAt) : nil
        // `restorable` is derived from the fields above and not read back.
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encodeIfPresent(jobID, forKey: .jobID)
        try c.encode(device, forKey: .device)
        try c.encodeIfPresent(chainID, forKey: .chainID)
        try c.encodeIfPresent(chain, forKey: .chain)
        try c.encode(kind, forKey: .kind)
        try c.encode(sync, forKey: .sync)
        try c.encodeIfPresent(bitmap, forKey: .bitmap)
        try c.encode(image, forKey: .image)
        try c.encode(format, forKey: .format)
        try c.encode(status, forKey: .status)
        try c.encodeIfPresent(error, forKey: .error)
        try c.encode(consistency, forKey: .consistency)
        try c.encode(Timestamp.text(startedAt), forKey: .startedAt)
        try c.encodeIfPresent(finishedAt.map(Timestamp.text), forKey: .finishedAt)
        try c.encodeIfPresent(bytesRead, forKey: .bytesRead)
        try c.encodeIfPresent(bytesWritten, forKey: .bytesWritten)
        try c.encodeIfPresent(imageSize, forKey: .imageSize)
        try c.encodeIfPresent(imageDigest, forKey: .imageDigest)
        try c.encodeIfPresent(parentID, forKey: .parentID)
        try c.encodeIfPresent(incompleteAncestor, forKey: .incompleteAncestor)
        try c.encodeIfPresent(mergedInto, forKey: .mergedInto)
        try c.encodeIfPresent(retiredAt.map(Timestamp.text), forKey: .retiredAt)
        try c.encode(restorable, forKey: .restorable)
    }
}

/// Times on the wire: ISO 8601 in UTC with milliseconds, the precision the
/// catalog stores, whatever date strategy the encoder was given.
enum Timestamp {
    /// `2025-06-01T02:00:00.123Z`. The milliseconds are rounded from the Date
    /// here rather than by the format style, which truncates: a time read back
    /// from the catalog as 0.122999… s must print as .123.
    static func text(_ date: Date) -> String {
        let ms = milliseconds(date)
        let seconds = ms >= 0 ? ms / 1000 : (ms - 999) / 1000
        let whole = Date(timeIntervalSince1970: Double(seconds)).formatted(Date.ISO8601FormatStyle())
        return whole.dropLast() + String(format: ".%03lldZ", ms - seconds * 1000)
    }

    static func decode<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> Date {
        let s = try c.decode(String.self, forKey: key)
        // Through milliseconds, so that the Date is the one the catalog would
        // have made of the same time (the parser's double arithmetic differs
        // from ours in the last bit).
        if let d = try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(s) {
            return date(milliseconds: milliseconds(d))
        }
        if let d = try? Date.ISO8601FormatStyle().parse(s) { return date(milliseconds: milliseconds(d)) }
        throw DecodingError.dataCorruptedError(forKey: key, in: c,
                                               debugDescription: "'\(s)' is not an ISO 8601 time")
    }

    /// Milliseconds since 1970, as the catalog stores times.
    static func milliseconds(_ date: Date) -> Int64 { Int64((date.timeIntervalSince1970 * 1000).rounded()) }
    static func date(milliseconds: Int64) -> Date { Date(timeIntervalSince1970: Double(milliseconds) / 1000) }
}
