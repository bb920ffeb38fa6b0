import BlockDevices
import BlockIO
import Foundation
import Images

/// What a finished restore did.
public struct RestoreSummary: Codable, Sendable {
    public var image: String
    public var target: String
    public var size: UInt64
    public var bytesWritten: UInt64
    public var zeroBytes: UInt64
    public var seconds: Double
    public var verifiedFirst: Bool

    enum CodingKeys: String, CodingKey {
        case image, target, size, seconds
        case bytesWritten = "bytes_written", zeroBytes = "zero_bytes", verifiedFirst = "verified_first"
    }
}

/// Writes an image back to a device or a file (DESIGN §8).
///
/// Everything that can be checked is checked before the first byte is
/// written: the image's structure (the reader validates every table at open),
/// its content against the digest file when there is one, and the target
/// (not mounted, large enough, not an existing file unless forced).
public enum Restore {
    public static func run(image: String, to target: String, force: Bool, verifyFirst: Bool = true,
                           progress: CopyControl = CopyControl()) throws -> RestoreSummary {
        let started = Date()
        let reader: ImageReader
        do { reader = try openImage(path: image) } catch {
            throw BackupError("cannot restore \(image): \(error); nothing was written to \(target)")
        }
        let size = reader.virtualSize

        // The target, before anything is read in bulk.
        var st = stat()
        let exists = stat(target, &st) == 0
        let isDevice = exists && (st.st_mode & S_IFMT) == S_IFBLK
        if exists && !isDevice {
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw BackupError("restore target \(target) is not a block device or a regular file")
            }
            var ist = stat()
            if stat(image, &ist) == 0 && ist.st_dev == st.st_dev && ist.st_ino == st.st_ino {
                throw BackupError("Source and target cannot be the same: \(image) and \(target) are one file")
            }
            guard force else { throw BackupError("restore target \(target) already exists; use --force to overwrite it") }
        }
        if isDevice {
            let mounts = try MountTable.current().filesystemsMounted(from: target)
            if let m = mounts.first {
                throw BackupError("restore target \(target) is mounted at \(m.mountPoint); unmount it first")
            }
        }

        if verifyFirst && FileManager.default.fileExists(atPath: DigestFile.path(forImage: image)) {
            let report = try Verify.againstDigests(image: image, reader: reader)
            guard report.ok else {
                throw BackupError("image \(image) does not match its digest file (\(report.summary)); "
                                  + "nothing was written to \(target)")
            }
        }

        let out: BlockFile
        if isDevice {
            out = try BlockFile(path: target, mode: .write, direct: true)
            guard out.size >= size else {
                throw BackupError("restore target \(target) (\(out.size) bytes) is smaller than the image \(image) (\(size) bytes)")
            }
        } else {
            out = try BlockFile(path: target, mode: .create(truncate: true), direct: true)
        }

        let bufferSize = 4 << 20
        let buffer = AlignedBuffer(count: bufferSize, alignment: max(4096, out.logicalBlockSize))
        var written: UInt64 = 0, zeros: UInt64 = 0
        progress.start(total: size)
        for extent in try reader.mapping() {
            var offset = extent.offset
            while offset < extent.end {
                if progress.isCancelled { throw CopyError.cancelled }
                let n = Int(min(UInt64(bufferSize), extent.end - offset))
                if extent.kind == .zero {
                    if isDevice { try zeroDevice(out, at: offset, length: n, buffer: buffer) }
                    zeros += UInt64(n)
                } else {
                    try reader.read(into: buffer.pointer, count: n, at: offset)
                    let align = out.logicalBlockSize
                    let padded = (n + align - 1) / align * align
                    if padded > n { memset(buffer.pointer + n, 0, padded - n) }
                    try out.write(from: buffer.pointer, count: padded, at: offset)
                    written += UInt64(n)
                }
                offset += UInt64(n)
                progress.didRead(n)
                progress.didFinish(n)
            }
        }
        if !isDevice { try out.truncate(to: size) }
        try out.sync()
        return RestoreSummary(image: image, target: target, size: size, bytesWritten: written, zeroBytes: zeros,
                              seconds: Date().timeIntervalSince(started),
                              verifiedFirst: verifyFirst && FileManager.default.fileExists(atPath: DigestFile.path(forImage: image)))
    }

    /// Zeroes a range of a device with BLKZEROOUT, or by writing zeros where the
    /// device does not support it.
    static func zeroDevice(_ out: BlockFile, at offset: UInt64, length: Int, buffer: AlignedBuffer) throws {
        do {
            try out.zeroOut(at: offset, length: UInt64(length))
        } catch {
            memset(buffer.pointer, 0, length)
            try out.write(from: buffer.pointer, count: length, at: offset)
        }
    }
}
