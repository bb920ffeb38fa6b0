import BlockDevices
import BlockIO
import Foundation
import Images

/// The image format of a backup.
public enum ImageFormatChoice: String, Sendable, CaseIterable {
    case qcow2
    case raw
}

/// What to back up, where to, and how.
public struct BackupRequest: Sendable {
    public var device: String
    public var target: String
    public var format: ImageFormatChoice = .qcow2
    public var compression: Qcow2Writer.Compression = .none
    public var options = CopyOptions()
    /// Replace an existing image file.
    public var force = false

    public init(device: String, target: String) {
        self.device = device
        self.target = target
    }
}

/// What a finished backup did.
public struct BackupSummary: Codable, Sendable {
    public var device: String
    public var image: String
    /// The digest file; none for a raw backup onto a block device.
    public var digests: String?
    public var format: String
    public var engine: String
    public var size: UInt64
    public var clusterSize: Int
    public var bytesRead: UInt64
    public var bytesWritten: UInt64
    public var zeroBytes: UInt64
    public var seconds: Double
    public var mbPerSecond: Double
    public var fallbackReason: String?

    enum CodingKeys: String, CodingKey {
        case device, image, digests, format, engine, size, seconds
        case clusterSize = "cluster_size", bytesRead = "bytes_read", bytesWritten = "bytes_written"
        case zeroBytes = "zero_bytes", mbPerSecond = "mb_per_s", fallbackReason = "fallback_reason"
    }
}

/// A backup, restore or verify refused or failed; the text names the thing and the reason.
public struct BackupError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A full backup of a device (or file) into a qcow2 or raw image (DESIGN §4, §8).
///
/// The image is written under a `.partial` name and renamed only after data,
/// tables and header are fsynced, so a crashed or failed backup never leaves
/// a file that looks like a complete image. The digest file is written
/// atomically after the rename.
public enum FullBackup {
    public static func run(_ request: BackupRequest, control: CopyControl = CopyControl(),
                           warn: (String) -> Void = { _ in }) throws -> BackupSummary {
        do { try request.options.validate() } catch { throw BackupError("\(error)") }
        let source = try BlockFile(path: request.device, mode: .read, direct: true)
        let targetIsDevice = try TargetCheck.validate(source: source, target: request.target, force: request.force)
        if targetIsDevice && request.format == .qcow2 {
            throw BackupError("cannot write a qcow2 image onto block device \(request.target); use --format raw")
        }

        let size = source.size
        let cs = request.options.clusterSize
        let image = request.target
        let partial = targetIsDevice ? image : image + ".partial"
        if !targetIsDevice { unlink(partial) }
        let target: BackupTarget
        let targetFile: BlockFile
        switch (request.format, targetIsDevice) {
        case (.qcow2, _):
            let writer = try Qcow2Writer(path: partial, virtualSize: size, clusterSize: cs,
                                         compression: request.compression)
            target = .qcow2(writer)
            targetFile = writer.file
        case (.raw, false):
            targetFile = try BlockFile(path: partial, mode: .create(truncate: true), direct: true)
            target = .rawFile(targetFile)
        case (.raw, true):
            targetFile = try BlockFile(path: image, mode: .write, direct: true)
            guard targetFile.size >= size else {
                throw BackupError("target device \(image) (\(targetFile.size) bytes) is smaller than \(request.device) (\(size) bytes)")
            }
            target = .rawDevice(targetFile)
        }
        if request.compression != .none && request.format != .qcow2 {
            throw BackupError("compression needs --format qcow2")
        }

        let sink = BackupSink(target: target, clusterSize: cs, deviceSize: size)
        let plan = ChunkPlan(deviceSize: size, clusterSize: cs, chunkSize: request.options.chunkSize)
        let stats: CopyStats
        do {
            stats = try CopyEngine.run(plan: plan, source: source, target: targetFile, sink: sink,
                                       options: request.options, control: control, warn: warn)
            switch target {
            case .qcow2(let writer): try writer.finish()
            case .rawFile(let file):
                try file.truncate(to: size)
                try file.sync()
            case .rawDevice: break
            }
            if !targetIsDevice { try AtomicFile.rename(partial, to: image) }
            if !targetIsDevice { try sink.digests.write(to: DigestFile.path(forImage: image)) }
        } catch {
            if !targetIsDevice { unlink(partial) }
            throw error
        }
        var written = stats.bytesWritten
        if case .qcow2(let writer) = target { written += writer.bytesWritten }
        return BackupSummary(
            device: request.device, image: image, digests: targetIsDevice ? nil : DigestFile.path(forImage: image),
            format: request.format.rawValue, engine: stats.engine, size: size, clusterSize: cs,
            bytesRead: stats.bytesRead, bytesWritten: written,
            zeroBytes: sink.zeroBytes, seconds: stats.seconds,
            mbPerSecond: stats.seconds > 0 ? Double(stats.bytesRead) / 1e6 / stats.seconds : 0,
            fallbackReason: stats.fallbackReason)
    }
}

