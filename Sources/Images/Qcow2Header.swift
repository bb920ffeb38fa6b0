import BlockIO

/// The qcow2 v3 on-disk header and the arithmetic of its tables
/// (QEMU docs/interop/qcow2.txt). All fields are big-endian.
public struct Qcow2Header: Equatable, Sendable {
    public static let magic: UInt32 = 0x5146_49FB  // "QFI\xfb"
    /// Header length of v3 with the compression-type byte, padded to 8.
    public static let length: UInt32 = 112

    public var version: UInt32 = 3
    public var backingFileOffset: UInt64 = 0
    public var backingFileSize: UInt32 = 0
    public var clusterBits: UInt32 = 16
    public var size: UInt64 = 0
    public var cryptMethod: UInt32 = 0
    public var l1Size: UInt32 = 0
    public var l1TableOffset: UInt64 = 0
    public var refcountTableOffset: UInt64 = 0
    public var refcountTableClusters: UInt32 = 0
    public var nbSnapshots: UInt32 = 0
    public var snapshotsOffset: UInt64 = 0
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    /// log2 of the refcount width in bits; 4 means 16-bit refcounts.
    public var refcountOrder: UInt32 = 4
    public var headerLength: UInt32 = Qcow2Header.length
    /// 0 = deflate, 1 = zstd.
    public var compressionType: UInt8 = 0

    public init() {}

    /// Incompatible feature bits.
    public enum Incompatible {
        public static let dirty: UInt64 = 1 << 0
        public static let corrupt: UInt64 = 1 << 1
        public static let externalData: UInt64 = 1 << 2
        public static let compressionType: UInt64 = 1 << 3
        public static let extendedL2: UInt64 = 1 << 4
    }

    /// Header extension types.
    public enum Extension {
        public static let end: UInt32 = 0
        public static let backingFormat: UInt32 = 0xE279_2ACA
        public static let featureNameTable: UInt32 = 0x6803_F857
    }

    public var clusterSize: Int { 1 << Int(clusterBits) }

    /// Reads and parses the header of the qcow2 image at `path` (nothing else
    /// of the image is read or checked).
    public static func read(path: String) throws -> Qcow2Header {
        let file = try BlockFile(path: path, mode: .read, direct: false)
        var bytes = [UInt8](repeating: 0, count: Int(Qcow2Header.length))
        let n = try bytes.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: $0.count, at: 0) }
        do {
            return try Qcow2Header(decoding: Array(bytes.prefix(n)))
        } catch let error as ImageFormatError {
            throw error.inImage(path)
        }
    }

    /// Serializes the fixed part of the header (`headerLength` bytes).
    public func encoded() -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(Int(headerLength))
        func be32(_ v: UInt32) { out += [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
        func be64(_ v: UInt64) { be32(UInt32(v >> 32)); be32(UInt32(v & 0xffff_ffff)) }
        be32(Self.magic); be32(version); be64(backingFileOffset); be32(backingFileSize)
        be32(clusterBits); be64(size); be32(cryptMethod); be32(l1Size); be64(l1TableOffset)
        be64(refcountTableOffset); be32(refcountTableClusters); be32(nbSnapshots)
        be64(snapshotsOffset); be64(incompatibleFeatures); be64(compatibleFeatures)
        be64(autoclearFeatures); be32(refcountOrder); be32(headerLength)
        if headerLength > 104 {
            out.append(compressionType)
            out += [UInt8](repeating: 0, count: Int(headerLength) - 105)
        }
        return out
    }

    /// Parses a header; `bytes` must hold at least `headerLength` bytes.
    public init(decoding bytes: [UInt8]) throws(ImageFormatError) {
        guard bytes.count >= 72 else { throw .truncated("qcow2 header needs 72 bytes, file has \(bytes.count)") }
        func be32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3])
        }
        func be64(_ o: Int) -> UInt64 { UInt64(be32(o)) << 32 | UInt64(be32(o + 4)) }
        guard be32(0) == Self.magic else { throw .notQcow2 }
        version = be32(4)
        backingFileOffset = be64(8); backingFileSize = be32(16); clusterBits = be32(20)
        size = be64(24); cryptMethod = be32(32); l1Size = be32(36); l1TableOffset = be64(40)
        refcountTableOffset = be64(48); refcountTableClusters = be32(56); nbSnapshots = be32(60)
        snapshotsOffset = be64(64)
        if version >= 3 {
            guard bytes.count >= 104 else { throw .truncated("qcow2 v3 header needs 104 bytes, file has \(bytes.count)") }
            incompatibleFeatures = be64(72); compatibleFeatures = be64(80); autoclearFeatures = be64(88)
            refcountOrder = be32(96); headerLength = be32(100)
            if headerLength > 104 && bytes.count > 104 { compressionType = bytes[104] }
        } else {
            refcountOrder = 4; headerLength = 72
        }
    }
}

/// A malformed or unsupported image.
public indirect enum ImageFormatError: Error, Equatable, CustomStringConvertible, Sendable {
    case notQcow2
    case truncated(String)
    case corrupt(String)
    case unsupported(String)
    /// The dirty bit is set: refcounts may be stale after a crash.
    case notClosedCleanly
    /// The backing file is missing, loops back into the chain, or the chain is too deep.
    case unusableBackingFile(String)
    /// A read or mapping request reaches past the virtual size.
    case outOfRange(String)
    /// One of the other errors, in the image at `path`.
    case image(path: String, ImageFormatError)

    /// The same error, naming the image it was found in (once).
    public func inImage(_ path: String) -> ImageFormatError {
        if case .image = self { return self }
        return .image(path: path, self)
    }

    public var description: String {
        switch self {
        case .notQcow2: "not a qcow2 image (bad magic)"
        case .truncated(let why): "image is truncated: \(why)"
        case .corrupt(let why): "image is corrupt: \(why)"
        case .unsupported(let why): "unsupported image: \(why)"
        case .notClosedCleanly:
            "image was not closed cleanly (dirty bit set); repair it with 'qemu-img check -r all' first"
        case .unusableBackingFile(let why): "image has an unusable backing file: \(why)"
        case .outOfRange(let why): "request outside the image: \(why)"
        case .image(let path, let error):
            switch error {
            case .notQcow2: "\(path) is not a qcow2 image (bad magic)"
            case .truncated(let why): "image \(path) is truncated: \(why)"
            case .corrupt(let why): "image \(path) is corrupt: \(why)"
            case .unsupported(let why): "image \(path) is not supported: \(why)"
            case .notClosedCleanly:
                "image \(path) was not closed cleanly (dirty bit set); repair it with 'qemu-img check -r all' first"
            case .unusableBackingFile(let why): "image \(path) has an unusable backing file: \(why)"
            case .outOfRange(let why): "request outside image \(path): \(why)"
            case .image: error.description
            }
        }
    }
}

/// Table geometry of a qcow2 image: how guest offsets map to L1 and L2
/// indexes, and how many tables and refcount blocks an image needs.
public struct Qcow2Geometry: Equatable, Sendable {
    public let clusterBits: Int
    public let virtualSize: UInt64
    /// log2 of the refcount width in bits (4: 16-bit).
    public let refcountOrder: Int

    public init(clusterBits: Int, virtualSize: UInt64, refcountOrder: Int = 4) {
        self.clusterBits = clusterBits
        self.virtualSize = virtualSize
        self.refcountOrder = refcountOrder
    }

    public var clusterSize: Int { 1 << clusterBits }
    /// Entries in one L2 table (8 bytes each).
    public var l2Entries: Int { clusterSize / 8 }
    /// Guest clusters covering the virtual size.
    public var guestClusters: UInt64 { (virtualSize + UInt64(clusterSize) - 1) >> UInt64(clusterBits) }
    /// Entries in the L1 table.
    public var l1Entries: Int { Int((guestClusters + UInt64(l2Entries) - 1) / UInt64(l2Entries)) }
    /// Refcount entries in one refcount block.
    public var refcountsPerBlock: Int { (clusterSize * 8) >> refcountOrder }

    /// (L1 index, L2 index) of a guest offset.
    public func indexes(of guestOffset: UInt64) -> (l1: Int, l2: Int) {
        let cluster = guestOffset >> UInt64(clusterBits)
        return (Int(cluster / UInt64(l2Entries)), Int(cluster % UInt64(l2Entries)))
    }

    /// Clusters needed to hold `bytes`.
    public func clusters(for bytes: Int) -> Int { (bytes + clusterSize - 1) / clusterSize }

    /// Refcount blocks and refcount-table clusters needed so that an image of
    /// `usedClusters` clusters plus the refcount structures themselves is covered.
    /// The structures refcount themselves, so this is a small fixed point.
    public func refcountStructures(forUsedClusters usedClusters: UInt64) -> (blocks: Int, tableClusters: Int) {
        var blocks = 0, table = 0
        while true {
            let total = usedClusters + UInt64(blocks + table)
            let needBlocks = Int((total + UInt64(refcountsPerBlock) - 1) / UInt64(refcountsPerBlock))
            let needTable = clusters(for: needBlocks * 8)
            if needBlocks == blocks && needTable == table { return (blocks, table) }
            blocks = max(blocks, needBlocks); table = max(table, needTable)
        }
    }
}

/// L2 entry bits (standard, non-extended L2).
public enum Qcow2Entry {
    /// Refcount is exactly 1: the cluster may be written in place.
    public static let copied: UInt64 = 1 << 63
    public static let compressed: UInt64 = 1 << 62
    /// Reads as zero (standard clusters only).
    public static let zero: UInt64 = 1
    /// Host cluster offset of a standard entry (bits 9–55).
    public static let offsetMask: UInt64 = 0x00FF_FFFF_FFFF_FE00
    /// Host offset mask of an L1 entry (bits 9–55).
    public static let l1OffsetMask: UInt64 = 0x00FF_FFFF_FFFF_FE00
}
