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
    /// Leave the finished image under its `.partial` name for `PendingImage`
    /// to publish or discard (a job publishes only when it is finalized).
    public var publishLater = false
    /// Further passes over the same image before it is finished (a converging
    /// backup): called after each pass, it returns the device ranges to copy
    /// again, or nil when the image is complete. It may block (e.g. for a freeze).
    public var nextPass: (@Sendable () throws -> [Extent]?)?

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
        if request.compression != .none && request.format != .qcow2 {
            throw BackupError("compression needs --format qcow2")
        }
        let source = try BlockFile(path: request.device, mode: .read, direct: true)
        let targetIsDevice = try TargetCheck.validate(source: source, target: request.target, force: request.force)
        if targetIsDevice && request.format == .qcow2 {
            throw BackupError("cannot write a qcow2 image onto block device \(request.target); use --format raw")
        }

        let size = source.size
        let cs = request.options.clusterSize
        let image = request.target
        let output: ImageOutput
        switch (request.format, targetIsDevice) {
        case (.qcow2, _):
            output = try ImageOutput.qcow2(image: image, virtualSize: size, clusterSize: cs,
                                           compression: request.compression)
        case (.raw, false):
            let partial = ImageOutput.partialPath(image)
            unlink(partial)
            output = ImageOutput(image: image, partial: partial,
                                 target: .rawFile(try BlockFile(path: partial, mode: .create(truncate: true), direct: true)))
        case (.raw, true):
            let device = try BlockFile(path: image, mode: .write, direct: true)
            guard device.size >= size else {
                throw BackupError("target device \(image) (\(device.size) bytes) is smaller than \(request.device) (\(size) bytes)")
            }
            output = ImageOutput(image: image, partial: nil, target: .rawDevice(device))
        }
        let sink = BackupSink(target: output.target, clusterSize: cs, deviceSize: size)
        let plan = ChunkPlan(deviceSize: size, clusterSize: cs, chunkSize: request.options.chunkSize)
        let stats = try output.fill(plan: plan, source: source, sink: sink, options: request.options,
                                    control: control, publishLater: request.publishLater,
                                    nextPass: request.nextPass, warn: warn)
        return BackupSummary(
            device: request.device, image: image, digests: output.partial == nil ? nil : DigestFile.path(forImage: image),
            format: request.format.rawValue, engine: stats.engine, size: size, clusterSize: cs,
            bytesRead: stats.bytesRead, bytesWritten: output.bytesWritten(stats),
            zeroBytes: sink.zeroBytes, seconds: stats.seconds,
            mbPerSecond: stats.seconds > 0 ? Double(stats.bytesRead) / 1e6 / stats.seconds : 0,
            fallbackReason: stats.fallbackReason)
    }
}

/// An image being written: its final name, the `.partial` name it is written
/// under (nil for a raw device), and the target the sink writes to.
struct ImageOutput {
    let image: String
    let partial: String?
    let target: BackupTarget

    static func partialPath(_ image: String) -> String { image + ".partial" }

    /// A qcow2 image (an overlay when `backingFile` is given) under its `.partial` name.
    static func qcow2(image: String, virtualSize: UInt64, clusterSize: Int, backingFile: String? = nil,
                      compression: Qcow2Writer.Compression = .none) throws -> ImageOutput {
        let partial = partialPath(image)
        unlink(partial)
        let writer = try Qcow2Writer(path: partial, virtualSize: virtualSize, clusterSize: clusterSize,
                                     backingFile: backingFile, compression: compression)
        return ImageOutput(image: image, partial: partial, target: .qcow2(writer))
    }

    var file: BlockFile {
        switch target {
        case .qcow2(let writer): writer.file
        case .rawFile(let f), .rawDevice(let f): f
        }
    }

    /// Runs the copy, finishes the image, renames it into place and writes its
    /// digests; on any failure the partial file is removed.
    func fill(plan: ChunkPlan, source: BlockFile, sink: BackupSink, options: CopyOptions,
              control: CopyControl, publishLater: Bool, nextPass: (() throws -> [Extent]?)? = nil,
              warn: (String) -> Void) throws -> CopyStats {
        do {
            var stats = try CopyEngine.run(plan: plan, source: source, target: file, sink: sink,
                                           options: options, control: control, warn: warn)
            while let extents = try nextPass?() {
                sink.rewriting = true
                let again = ChunkPlan(extents: extents, deviceSize: sink.deviceSize, clusterSize: sink.clusterSize,
                                      chunkSize: options.chunkSize)
                let more = try CopyEngine.run(plan: again, source: source, target: file, sink: sink,
                                              options: options, control: control, warn: warn)
                stats.bytesRead += more.bytesRead
                stats.bytesWritten += more.bytesWritten
                stats.seconds += more.seconds
            }
            switch target {
            case .qcow2(let writer): try writer.finish()
            case .rawFile(let f):
                try f.truncate(to: sink.deviceSize)
                try f.sync()
            case .rawDevice: break
            }
            if let partial {
                if publishLater {
                    try sink.digests.write(to: DigestFile.path(forImage: partial))
                } else {
                    try AtomicFile.rename(partial, to: image)
                    try sink.digests.write(to: DigestFile.path(forImage: image))
                }
            }
            return stats
        } catch {
            if let partial { PendingImage.discard(image: image, partial: partial) }
            throw error
        }
    }

    func bytesWritten(_ stats: CopyStats) -> UInt64 {
        if case .qcow2(let writer) = target { return stats.bytesWritten + writer.bytesWritten }
        return stats.bytesWritten
    }
}


/// A finished image still under its `.partial` name (a backup run with
/// `publishLater`): a job publishes it when it is finalized and discards it
/// when it aborts, so that no image of a failed or cancelled job ever appears
/// under a name that looks restorable.
public enum PendingImage {
    /// Renames the image and then its digest file into place.
    public static func publish(image: String) throws {
        let partial = ImageOutput.partialPath(image)
        try AtomicFile.rename(partial, to: image)
        let digests = DigestFile.path(forImage: partial)
        if FileManager.default.fileExists(atPath: digests) {
            try AtomicFile.rename(digests, to: DigestFile.path(forImage: image))
        }
    }

    /// The name an image is written under until it is published.
    public static func partialPath(_ image: String) -> String { ImageOutput.partialPath(image) }

    /// Removes the partial image and its digests, if any.
    public static func discard(image: String) {
        discard(image: image, partial: ImageOutput.partialPath(image))
    }

    static func discard(image: String, partial: String) {
        unlink(partial)
        unlink(DigestFile.path(forImage: partial))
    }
}
