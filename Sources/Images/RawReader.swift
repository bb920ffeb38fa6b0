import BlockIO

/// A raw image: a regular (usually sparse) file or a block device, read as is.
public final class RawReader: ImageReader, @unchecked Sendable {
    public let path: String
    public let virtualSize: UInt64
    /// 4096, or a device's physical block size when larger: the granularity
    /// at which filesystems report holes.
    public let clusterSize: Int
    public var format: ImageFormat { .raw }
    private let file: BlockFile

    /// Opens a raw image (buffered reads).
    public convenience init(path: String) throws {
        self.init(file: try BlockFile(path: path, mode: .read, direct: false))
    }

    init(file: BlockFile) {
        self.file = file
        path = file.path
        virtualSize = file.size
        clusterSize = max(4096, file.physicalBlockSize)
    }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws {
        precondition(count >= 0)
        try checkRange(offset, UInt64(count), "read")
        let n = try file.read(into: buffer, count: count, at: offset)
        guard n == count else {
            throw ImageFormatError.truncated(
                "read of \(hex(count)) bytes at offset \(hex(offset)) ended after \(hex(n)) bytes: the file shrank to less than \(hex(virtualSize)) bytes"
            ).inImage(path)
        }
    }

    /// Holes and data as the filesystem reports them (SEEK_DATA/SEEK_HOLE);
    /// a block device is all data.
    public func mapping(from offset: UInt64, length: UInt64) throws -> [ImageExtent] {
        try checkRange(offset, length, "mapping")
        let end = offset + length
        guard length > 0 else { return [] }
        guard file.kind == .regularFile else { return [ImageExtent(offset: offset, length: length, kind: .data)] }
        var extents: [ImageExtent] = []
        var pos = offset
        while pos < end {
            guard let data = try ImageSys.seek(file.fd, pos, whence: ImageSys.seekData, path: path), data < end else {
                appendMerging(&extents, ImageExtent(offset: pos, length: end - pos, kind: .zero))
                break
            }
            appendMerging(&extents, ImageExtent(offset: pos, length: data - pos, kind: .zero))
            // Every file has an implicit hole at its end, so SEEK_HOLE finds one
            // unless the file shrank under us; treat that as data to the end.
            var hole = min(try ImageSys.seek(file.fd, data, whence: ImageSys.seekHole, path: path) ?? end, end)
            if hole <= data { hole = end }  // cannot happen unless the file changes; never loop
            appendMerging(&extents, ImageExtent(offset: data, length: hole - data, kind: .data))
            pos = hole
        }
        return extents
    }
}
