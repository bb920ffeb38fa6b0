import BlockIO
import Foundation
import Images

/// An incremental backup: a qcow2 overlay on the newest image of a chain.
public struct IncrementalRequest: Sendable {
    public var device: String
    /// The newest image of the chain; the new image's backing file.
    public var previousImage: String
    /// The new overlay.
    public var target: String
    /// Device ranges that changed since the previous image (from a dirty
    /// bitmap); nil for a digest rescan of the whole device.
    public var changed: [Extent]?
    /// Engine knobs; the cluster size is always the previous image's.
    public var options = CopyOptions()
    /// Compress the overlay's clusters (qcow2 compression type zstd).
    public var compression: Qcow2Writer.Compression = .none
    public var force = false
    /// See `BackupRequest.publishLater`.
    public var publishLater = false
    /// Further passes over the same image before it is finished (a converging
    /// backup): called after each pass, it returns the device ranges to copy
    /// again, or nil when the image is complete. It may block (e.g. for a freeze).
    public var nextPass: (@Sendable () throws -> [Extent]?)?

    public init(device: String, previousImage: String, target: String, changed: [Extent]?) {
        self.device = device
        self.previousImage = previousImage
        self.target = target
        self.changed = changed
    }
}

/// What an incremental did, beyond a full backup's figures.
public struct IncrementalSummary: Codable, Sendable {
    public var backup: BackupSummary
    /// The backing file name recorded in the overlay (relative to it).
    public var backingFile: String
    /// "bitmap" or "rescan".
    public var mode: String
    /// Bytes read but left out because they equal the previous backup (rescan).
    public var unchangedBytes: UInt64

    enum CodingKeys: String, CodingKey {
        case backup, mode
        case backingFile = "backing_file", unchangedBytes = "unchanged_bytes"
    }
}

/// Writes only what changed since the previous image of a chain (DESIGN §6, §8).
///
/// With a list of changed ranges (a dirty bitmap's extents) exactly those
/// clusters are copied. Without one, the digest rescan reads the whole device
/// and keeps the clusters whose digest differs from the previous backup's; it
/// is how an inconsistent bitmap is re-armed without trusting it.
/// The new digest file is the previous one with the copied clusters updated,
/// so it always describes the whole device as of this backup.
public enum IncrementalBackup {
    public static func run(_ request: IncrementalRequest, control: CopyControl = CopyControl(),
                           warn: (String) -> Void = { _ in }) throws -> IncrementalSummary {
        // Only the header is needed here: loading every L2 table of the chain
        // would cost more than a small incremental. The chain is validated in
        // full whenever it is read (restore, verify).
        let previousSize = try Qcow2Header.read(path: request.previousImage).size
        let digestPath = DigestFile.path(forImage: request.previousImage)
        guard FileManager.default.fileExists(atPath: digestPath) else {
            throw BackupError("previous image \(request.previousImage) has no digest file \(digestPath); "
                              + "take a full backup to start a new chain")
        }
        let baseline = try DigestFile(contentsOf: digestPath)
        var options = request.options
        options.clusterSize = baseline.clusterSize
        options.chunkSize = max(options.chunkSize / baseline.clusterSize, 1) * baseline.clusterSize
        do { try options.validate() } catch { throw BackupError("\(error)") }

        let source = try BlockFile(path: request.device, mode: .read, direct: true)
        guard source.size == previousSize, source.size == baseline.deviceSize else {
            throw BackupError("\(request.device) is \(source.size) bytes but the chain of \(request.previousImage) "
                              + "is \(previousSize) bytes; a device that changed size needs a new full backup")
        }
        if try TargetCheck.validate(source: source, target: request.target, force: request.force) {
            throw BackupError("an incremental backup is a qcow2 overlay and cannot be written onto block device \(request.target)")
        }
        let backing = relativePath(of: request.previousImage, from: request.target)
        let output = try ImageOutput.qcow2(image: request.target, virtualSize: source.size,
                                           clusterSize: baseline.clusterSize, backingFile: backing,
                                           compression: request.compression)
        let rescan = request.changed == nil
        let sink = BackupSink(target: output.target, clusterSize: baseline.clusterSize, deviceSize: source.size,
                              baseline: baseline, skipUnchanged: rescan)
        let plan = rescan
            ? ChunkPlan(deviceSize: source.size, clusterSize: options.clusterSize, chunkSize: options.chunkSize)
            : ChunkPlan(extents: request.changed!, deviceSize: source.size, clusterSize: options.clusterSize,
                        chunkSize: options.chunkSize)
        let stats = try output.fill(plan: plan, source: source, sink: sink, options: options,
                                    control: control, publishLater: request.publishLater,
                                    nextPass: request.nextPass, warn: warn)
        let summary = BackupSummary(
            device: request.device, image: request.target, digests: DigestFile.path(forImage: request.target),
            format: "qcow2", engine: stats.engine, size: source.size, clusterSize: baseline.clusterSize,
            bytesRead: stats.bytesRead, bytesWritten: output.bytesWritten(stats), zeroBytes: sink.zeroBytes,
            seconds: stats.seconds, mbPerSecond: stats.seconds > 0 ? Double(stats.bytesRead) / 1e6 / stats.seconds : 0,
            fallbackReason: stats.fallbackReason)
        return IncrementalSummary(backup: summary, backingFile: backing, mode: rescan ? "rescan" : "bitmap",
                                  unchangedBytes: sink.unchangedBytes)
    }

    /// `target`'s path as seen from the directory of `from` (qcow2 resolves a
    /// relative backing name against the overlay's directory).
    static func relativePath(of target: String, from overlay: String) -> String {
        func components(_ p: String) -> [String] {
            URL(fileURLWithPath: p).standardizedFileURL.resolvingSymlinksInPath().pathComponents
        }
        let t = components(target)
        let base = Array(components(overlay).dropLast())
        var common = 0
        while common < min(t.count - 1, base.count) && t[common] == base[common] { common += 1 }
        let ups = Array(repeating: "..", count: base.count - common)
        return (ups + t[common...]).joined(separator: "/")
    }
}
