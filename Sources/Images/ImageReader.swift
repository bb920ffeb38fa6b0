import BlockIO

/// A disk image opened for reading its guest (virtual) bytes, whatever its format.
///
/// Readers keep no mutable state after they are opened, so one reader may
/// serve concurrent `read` calls.
public protocol ImageReader: AnyObject, Sendable {
    /// The path the image was opened by.
    var path: String { get }
    /// Size of the guest disk in bytes.
    var virtualSize: UInt64 { get }
    /// The allocation granularity in bytes: the qcow2 cluster size, or the
    /// block size at which a raw file reports holes.
    var clusterSize: Int { get }
    /// The on-disk format.
    var format: ImageFormat { get }

    /// Reads `count` guest bytes at `offset`. Unallocated and zero ranges read
    /// as zeros (or from the backing file); a range past `virtualSize` is an error.
    func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws

    /// Which parts of `[offset, offset + length)` hold data and which read as
    /// zero, as maximal runs in ascending order that exactly cover the range.
    func mapping(from offset: UInt64, length: UInt64) throws -> [ImageExtent]
}

/// A run of guest bytes that either holds data or reads as zero.
public struct ImageExtent: Equatable, Sendable, CustomStringConvertible {
    /// What a run of guest bytes holds.
    public enum Kind: Sendable, Equatable {
        /// Allocated: must be read (it may still happen to contain zeros).
        case data
        /// Reads as zero without touching any data.
        case zero
    }

    public var offset: UInt64
    public var length: UInt64
    public var kind: Kind

    public init(offset: UInt64, length: UInt64, kind: Kind) {
        self.offset = offset
        self.length = length
        self.kind = kind
    }

    /// One past the last byte.
    public var end: UInt64 { offset + length }

    public var description: String { "\(kind) \(hex(offset))+\(hex(length))" }
}

extension ImageReader {
    /// The mapping of the whole guest disk.
    public func mapping() throws -> [ImageExtent] { try mapping(from: 0, length: virtualSize) }

    /// Throws unless `[offset, offset + length)` lies within the virtual size.
    func checkRange(_ offset: UInt64, _ length: UInt64, _ what: String) throws(ImageFormatError) {
        guard offset <= virtualSize, length <= virtualSize - offset else {
            throw ImageFormatError.outOfRange(
                "\(what) of \(hex(length)) bytes at offset \(hex(offset)) goes past the virtual size \(hex(virtualSize))"
            ).inImage(path)
        }
    }
}

/// Opens the image at `path` in `format`, or, when `format` is nil, as qcow2
/// if the file starts with the qcow2 magic and raw otherwise (so a qcow2 file
/// whose header was never written opens as raw unless `.qcow2` is asked for).
/// A qcow2 image's backing chain is opened with it.
///
/// A file named `*.qcow2` must be qcow2: an unfinished or overwritten qcow2 is
/// refused rather than read as raw bytes.
public func openImage(path: String, format: ImageFormat? = nil) throws -> ImageReader {
    let format = format ?? (path.hasSuffix(".qcow2") ? .qcow2 : nil)
    return try openImage(path: path, format: format, chain: [])
}

/// The (st_dev, st_ino) of an image file: how a loop in a backing chain is found.
struct FileIdentity: Equatable, Sendable {
    let device: UInt64
    let inode: UInt64

    init(_ file: BlockFile) {
        device = file.kind == .blockDevice ? file.rdev : file.device
        inode = file.kind == .blockDevice ? 0 : file.inode
    }
}

/// Opens one image of a backing chain. `chain` holds the images above it,
/// topmost first; `format` is what the overlay's header says, if it says.
func openImage(path: String, format: ImageFormat?, chain: [FileIdentity]) throws -> ImageReader {
    let file = try BlockFile(path: path, mode: .read, direct: false)
    let identity = FileIdentity(file)
    if chain.contains(identity) {
        throw ImageFormatError.unusableBackingFile("\(path) is already in the backing chain (the chain loops)")
    }
    let detected = try format ?? probeFormat(file)
    switch detected {
    case .qcow2: return try Qcow2Reader(file: file, chain: chain + [identity])
    case .raw: return RawReader(file: file)
    }
}

/// qcow2 when the first four bytes are the qcow2 magic.
func probeFormat(_ file: BlockFile) throws -> ImageFormat {
    var magic: UInt32 = 0
    let n = try withUnsafeMutableBytes(of: &magic) { try file.read(into: $0.baseAddress!, count: 4, at: 0) }
    return n == 4 && UInt32(bigEndian: magic) == Qcow2Header.magic ? .qcow2 : .raw
}

/// Appends an extent, merging it into the last one when they touch and agree.
func appendMerging(_ extents: inout [ImageExtent], _ next: ImageExtent) {
    guard next.length > 0 else { return }
    if let last = extents.last, last.kind == next.kind, last.end == next.offset {
        extents[extents.count - 1].length += next.length
    } else {
        extents.append(next)
    }
}

/// 0x-prefixed hexadecimal, the way offsets appear in error messages and in `qemu-img map`.
func hex<T: BinaryInteger>(_ value: T) -> String { "0x" + String(value, radix: 16) }
