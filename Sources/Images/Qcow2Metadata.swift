import BlockIO

/// What a qcow2 image's first cluster says, checked against the file before
/// any table or data is read: the header, its extensions and the backing file name.
struct Qcow2Metadata: Sendable {
    let header: Qcow2Header
    let geometry: Qcow2Geometry
    let compression: Qcow2Decompressor.Method
    /// The backing file name exactly as stored, nil when there is none.
    let backingFile: String?
    /// The backing format header extension ("qcow2", "raw"), when present.
    let backingFormat: String?
    /// The file size the metadata was checked against.
    let fileSize: UInt64

    /// Largest L1 table accepted (QEMU's QCOW_MAX_L1_SIZE): 4 Mi entries.
    static let maxL1Bytes: UInt64 = 32 << 20
    /// Backing file names are at most 1023 bytes (qcow2.txt).
    static let maxBackingNameLength = 1023
    static let knownIncompatible = Qcow2Header.Incompatible.dirty | Qcow2Header.Incompatible.corrupt
        | Qcow2Header.Incompatible.externalData | Qcow2Header.Incompatible.compressionType
        | Qcow2Header.Incompatible.extendedL2

    /// Reads and checks the header cluster. Errors do not yet name the path.
    init(file: BlockFile) throws {
        fileSize = file.size
        // The fixed header fits in 112 bytes; read one sector to learn the
        // cluster size, then the whole header cluster for extensions and the
        // backing file name.
        var first = try Self.readBytes(file, count: Int(min(fileSize, 512)))
        if first.count < 4 || first.prefix(4) != [0x51, 0x46, 0x49, 0xFB] { throw ImageFormatError.notQcow2 }
        var header = try Qcow2Header(decoding: first)
        guard (9...21).contains(header.clusterBits) else {
            throw ImageFormatError.unsupported("cluster_bits is \(header.clusterBits), outside 9...21")
        }
        let headerCluster = Int(min(fileSize, UInt64(header.clusterSize)))
        if headerCluster > first.count {
            first = try Self.readBytes(file, count: headerCluster)
            header = try Qcow2Header(decoding: first)
        }
        try Self.checkHeader(header, fileSize: fileSize, available: first.count)
        self.header = header
        geometry = Qcow2Geometry(clusterBits: Int(header.clusterBits), virtualSize: header.size,
                                 refcountOrder: Int(header.refcountOrder))
        compression = Qcow2Decompressor.Method(rawValue: header.compressionType)!
        try Self.checkTables(header, geometry: geometry, fileSize: fileSize)
        backingFormat = try Self.backingFormatExtension(header, first)
        backingFile = try Self.backingFileName(header, first)
    }

    private static func readBytes(_ file: BlockFile, count: Int) throws -> [UInt8] {
        guard count > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: count, at: 0) }
        return Array(bytes.prefix(n))
    }

    /// Version, features, encryption, sizes: everything decidable from the fixed header.
    private static func checkHeader(_ h: Qcow2Header, fileSize: UInt64, available: Int) throws(ImageFormatError) {
        guard h.version == 2 || h.version == 3 else {
            throw .unsupported("qcow2 version \(h.version) (only versions 2 and 3 are supported)")
        }
        guard h.cryptMethod == 0 else { throw .unsupported("the image is encrypted (crypt_method \(h.cryptMethod))") }
        let incompatible = h.incompatibleFeatures
        if incompatible & Qcow2Header.Incompatible.dirty != 0 { throw .notClosedCleanly }
        if incompatible & Qcow2Header.Incompatible.corrupt != 0 {
            throw .corrupt("the corrupt bit is set: QEMU found its metadata inconsistent; repair it with 'qemu-img check -r all'")
        }
        if incompatible & ~knownIncompatible != 0 {
            throw .unsupported("unknown incompatible features \(hex(incompatible & ~knownIncompatible))")
        }
        if incompatible & Qcow2Header.Incompatible.externalData != 0 {
            throw .unsupported("the data is in an external data file")
        }
        if incompatible & Qcow2Header.Incompatible.extendedL2 != 0 {
            throw .unsupported("extended L2 entries (subclusters)")
        }
        guard h.refcountOrder <= 6 else { throw .corrupt("refcount_order is \(h.refcountOrder), more than 6") }
        if h.version >= 3 {
            guard h.headerLength >= 104, h.headerLength % 8 == 0, Int(h.headerLength) <= h.clusterSize else {
                throw .corrupt("header_length \(h.headerLength) is not a multiple of 8 between 104 and the cluster size")
            }
            guard Int(h.headerLength) <= available else {
                throw .truncated("the header needs \(h.headerLength) bytes, the file has \(available)")
            }
        }
        let typed = incompatible & Qcow2Header.Incompatible.compressionType != 0
        if !typed && h.compressionType != 0 {
            throw .corrupt("compression_type is \(h.compressionType) but the compression type feature bit is clear")
        }
        guard Qcow2Decompressor.Method(rawValue: h.compressionType) != nil else {
            throw .unsupported("compression_type \(h.compressionType) (only 0, deflate, and 1, zstd, are known)")
        }
        // Keeps the cluster arithmetic below from overflowing; QEMU's own limit is 2^63 - 512.
        guard h.size <= UInt64(1) << 62 else { throw .unsupported("virtual size \(hex(h.size)) is too large") }
    }

    /// The L1 and refcount tables lie within the file and are large enough.
    private static func checkTables(_ h: Qcow2Header, geometry g: Qcow2Geometry, fileSize: UInt64) throws(ImageFormatError) {
        let cs = UInt64(g.clusterSize)
        let l1Bytes = UInt64(h.l1Size) * 8
        guard h.l1Size >= g.l1Entries else {
            throw .corrupt("the L1 table has \(h.l1Size) entries, the virtual size \(hex(h.size)) needs \(g.l1Entries)")
        }
        guard l1Bytes <= maxL1Bytes else { throw .unsupported("the L1 table has \(h.l1Size) entries, more than 4 Mi") }
        if h.l1Size > 0 {
            guard h.l1TableOffset % cs == 0, h.l1TableOffset != 0 else {
                throw .corrupt("the L1 table offset \(hex(h.l1TableOffset)) is not a cluster boundary after the header")
            }
            guard h.l1TableOffset <= fileSize, l1Bytes <= fileSize - h.l1TableOffset else {
                throw .truncated("the L1 table at host offset \(hex(h.l1TableOffset)) (\(hex(l1Bytes)) bytes) lies beyond the end of the file (\(hex(fileSize)) bytes)")
            }
        }
        let refcountBytes = UInt64(h.refcountTableClusters) * cs
        guard h.refcountTableOffset % cs == 0, h.refcountTableOffset != 0, h.refcountTableClusters > 0 else {
            throw .corrupt("the refcount table at host offset \(hex(h.refcountTableOffset)) (\(h.refcountTableClusters) clusters) is not cluster-aligned after the header")
        }
        guard h.refcountTableOffset <= fileSize, refcountBytes <= fileSize - h.refcountTableOffset else {
            throw .truncated("the refcount table at host offset \(hex(h.refcountTableOffset)) (\(hex(refcountBytes)) bytes) lies beyond the end of the file (\(hex(fileSize)) bytes)")
        }
    }

    /// Header extensions run from the end of the header to the backing file
    /// name (or the end of the first cluster); only the backing format matters here.
    private static func backingFormatExtension(_ h: Qcow2Header, _ bytes: [UInt8]) throws(ImageFormatError) -> String? {
        func be32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) << 24 | UInt32(bytes[o + 1]) << 16 | UInt32(bytes[o + 2]) << 8 | UInt32(bytes[o + 3])
        }
        var end = min(bytes.count, h.clusterSize)
        if h.backingFileOffset != 0 && h.backingFileOffset < UInt64(end) { end = Int(h.backingFileOffset) }
        var offset = h.version >= 3 ? Int(h.headerLength) : 72
        var format: String?
        while offset + 8 <= end {
            let type = be32(offset), length = Int(be32(offset + 4))
            if type == Qcow2Header.Extension.end { break }
            guard length <= end - offset - 8 else {
                throw .corrupt("header extension \(hex(type)) at offset \(hex(offset)) (\(length) bytes) runs past offset \(hex(end))")
            }
            if type == Qcow2Header.Extension.backingFormat {
                format = String(decoding: bytes[(offset + 8)..<(offset + 8 + length)], as: UTF8.self)
            }
            offset += 8 + (length + 7) / 8 * 8
        }
        return format
    }

    private static func backingFileName(_ h: Qcow2Header, _ bytes: [UInt8]) throws(ImageFormatError) -> String? {
        guard h.backingFileOffset != 0, h.backingFileSize > 0 else { return nil }
        guard h.backingFileSize <= maxBackingNameLength else {
            throw .corrupt("the backing file name is \(h.backingFileSize) bytes long, more than \(maxBackingNameLength)")
        }
        let end = h.backingFileOffset + UInt64(h.backingFileSize)
        guard end <= UInt64(h.clusterSize) else {
            throw .corrupt("the backing file name at offset \(hex(h.backingFileOffset)) (\(h.backingFileSize) bytes) runs past the first cluster")
        }
        guard end <= UInt64(bytes.count) else {
            throw .truncated("the backing file name at offset \(hex(h.backingFileOffset)) (\(h.backingFileSize) bytes) lies beyond the end of the file (\(hex(bytes.count)) bytes)")
        }
        return String(decoding: bytes[Int(h.backingFileOffset)..<Int(end)], as: UTF8.self)
    }
}
