import BlockIO
import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// Writes a qcow2 v3 image in one pass.
///
/// Data clusters are appended in the order the copy hands them over; the
/// tables (L2, L1, refcounts) stay in memory and are written by `finish()`,
/// and the header last of all, after an fsync. An interrupted backup therefore
/// leaves a file whose first cluster is zero, which no qcow2 reader accepts.
///
/// Refcounts are 16 bits (refcount_order 4). Every cluster the image uses has
/// refcount 1 and standard L1/L2 entries carry QCOW_OFLAG_COPIED, as
/// `qemu-img check` demands; a host cluster holding compressed data has one
/// reference per compressed cluster that touches it.
public final class Qcow2Writer {
    /// How compressed clusters are encoded.
    public enum Compression: String, Sendable {
        case none
        case zstd
    }

    public let path: String
    public let file: BlockFile
    public let geometry: Qcow2Geometry
    public let backingFile: String?
    public let compression: Compression

    private let headerBytes: [UInt8]
    private let headerClusters: Int
    /// L1 index → L2 table entries (host byte order).
    private var l2Tables: [Int: [UInt64]] = [:]
    /// Refcount of every host cluster allocated so far.
    private var refcounts: [UInt16]
    private var finished = false

    // Compressed writing: an aligned staging area for the host clusters that
    // follow `stagingHost`, filled byte by byte and flushed synchronously.
    private var staging: AlignedBuffer?
    private var stagingHost: UInt64 = 0
    private var stagingUsed = 0
    private var zstdContext: OpaquePointer?
    private var compressScratch: [UInt8] = []

    /// Creates (or replaces) the image file at `path`.
    /// - Parameters:
    ///   - backingFile: the name recorded in the header, relative to the image's
    ///     directory or absolute; unallocated clusters read from it.
    public init(path: String, virtualSize: UInt64, clusterSize: Int = 64 << 10,
                backingFile: String? = nil, backingFormat: String = "qcow2",
                compression: Compression = .none) throws {
        precondition(clusterSize.nonzeroBitCount == 1 && clusterSize >= 512 && clusterSize <= 2 << 20)
        self.path = path
        self.backingFile = backingFile
        self.compression = compression
        geometry = Qcow2Geometry(clusterBits: clusterSize.trailingZeroBitCount, virtualSize: virtualSize)

        var header = Qcow2Header()
        header.clusterBits = UInt32(geometry.clusterBits)
        header.size = virtualSize
        header.l1Size = UInt32(geometry.l1Entries)
        if compression == .zstd {
            header.compressionType = 1
            header.incompatibleFeatures |= Qcow2Header.Incompatible.compressionType
        }
        var bytes = header.encoded()
        if backingFile != nil {
            let fmt = Array(backingFormat.utf8)
            bytes += be32(Qcow2Header.Extension.backingFormat) + be32(UInt32(fmt.count)) + fmt
            bytes += [UInt8](repeating: 0, count: (8 - fmt.count % 8) % 8)
        }
        bytes += be32(Qcow2Header.Extension.end) + be32(0)
        if let backingFile {
            let name = Array(backingFile.utf8)
            guard !name.isEmpty && name.count <= 1023 else {
                throw ImageFormatError.unsupported("backing file name must be 1 to 1023 bytes, got \(name.count)")
            }
            // Offset and size of the name are patched into the encoded header.
            let offset = UInt64(bytes.count)
            bytes.replaceSubrange(8..<16, with: be64(offset))
            bytes.replaceSubrange(16..<20, with: be32(UInt32(name.count)))
            bytes += name
        }
        headerBytes = bytes
        headerClusters = geometry.clusters(for: bytes.count)
        refcounts = Array(repeating: 1, count: headerClusters)
        file = try BlockFile(path: path, mode: .create(truncate: true), direct: true)
        if compression == .zstd {
            staging = AlignedBuffer(count: (1 << 20) + 2 * clusterSize, alignment: max(4096, clusterSize))
            stagingHost = UInt64(headerClusters) << UInt64(geometry.clusterBits)
            zstdContext = ZSTD_createCCtx()
            compressScratch = Array(repeating: 0, count: ZSTD_compressBound(clusterSize))
        }
    }

    deinit { if let zstdContext { ZSTD_freeCCtx(zstdContext) } }

    /// Bytes this writer wrote itself: tables, header and compressed data (data
    /// clusters of an uncompressed image are written by the caller).
    public private(set) var bytesWritten: UInt64 = 0

    /// The host clusters used so far (the file's logical end in clusters).
    public var hostClusters: Int { refcounts.count }

    // MARK: data clusters

    /// Reserves `count` consecutive host clusters for the guest clusters starting
    /// at `guestCluster` and maps them; returns the host offset to write their
    /// data at. The caller writes the data (e.g. through the copy engine).
    public func allocate(guestCluster: UInt64, count: Int) -> UInt64 {
        precondition(compression == .none, "compressed images write through writeCompressed")
        let host = UInt64(refcounts.count) << UInt64(geometry.clusterBits)
        for i in 0..<count {
            setEntry(guestCluster: guestCluster + UInt64(i),
                     (host + UInt64(i) << UInt64(geometry.clusterBits)) | Qcow2Entry.copied)
        }
        refcounts += repeatElement(1, count: count)
        return host
    }

    /// The host offset of a guest cluster this writer already mapped to an
    /// uncompressed data cluster, or nil. A later pass of the same backup
    /// rewrites such a cluster in place.
    public func existingHost(guestCluster: UInt64) -> UInt64? {
        let l1 = Int(guestCluster / UInt64(geometry.l2Entries))
        let l2 = Int(guestCluster % UInt64(geometry.l2Entries))
        guard let entry = l2Tables[l1]?[l2], entry & Qcow2Entry.compressed == 0 else { return nil }
        let host = entry & Qcow2Entry.offsetMask
        return host == 0 ? nil : host
    }

    /// Marks a guest cluster as reading zero (QCOW_OFLAG_ZERO), hiding any
    /// backing file. Without a backing file an unallocated cluster reads zero
    /// already, so nothing is recorded.
    public func markZero(guestCluster: UInt64) {
        guard backingFile != nil else { return }
        setEntry(guestCluster: guestCluster, Qcow2Entry.zero)
    }

    /// Compresses one guest cluster and writes it (synchronously, through the
    /// staging area). Data that does not shrink is stored uncompressed.
    public func writeCompressed(guestCluster: UInt64, data: UnsafeRawPointer, count: Int) throws {
        precondition(compression == .zstd && count <= geometry.clusterSize)
        let cs = geometry.clusterSize
        let size = compressScratch.withUnsafeMutableBytes {
            ZSTD_compressCCtx(zstdContext, $0.baseAddress, $0.count, data, count, 1)
        }
        if ZSTD_isError(size) == 0 && size < cs - 512 {
            let offset = stagingHost + UInt64(stagingUsed)
            compressScratch.withUnsafeBytes { _ = memcpy(staging!.pointer + stagingUsed, $0.baseAddress!, size) }
            stagingUsed += size
            // One reference per host cluster the compressed bytes touch.
            let first = Int(offset >> UInt64(geometry.clusterBits))
            let last = Int((offset + UInt64(size) - 1) >> UInt64(geometry.clusterBits))
            for c in first...last { addReference(cluster: c) }
            let sectors = (offset + UInt64(size) - 1) >> 9 - offset >> 9
            let x = UInt64(62 - (geometry.clusterBits - 8))
            setEntry(guestCluster: guestCluster, Qcow2Entry.compressed | sectors << x | offset)
        } else {
            // Start a fresh cluster in the staging area for the raw data.
            stagingUsed = (stagingUsed + cs - 1) / cs * cs
            let offset = stagingHost + UInt64(stagingUsed)
            memcpy(staging!.pointer + stagingUsed, data, count)
            if count < cs { memset(staging!.pointer + stagingUsed + count, 0, cs - count) }
            stagingUsed += cs
            addReference(cluster: Int(offset >> UInt64(geometry.clusterBits)))
            setEntry(guestCluster: guestCluster, offset | Qcow2Entry.copied)
        }
        if stagingUsed >= 1 << 20 { try flushStaging() }
    }

    private func addReference(cluster: Int) {
        while refcounts.count <= cluster { refcounts.append(0) }
        refcounts[cluster] += 1
    }

    private func flushStaging() throws {
        guard let staging, stagingUsed > 0 else { return }
        let cs = geometry.clusterSize
        let length = (stagingUsed + cs - 1) / cs * cs
        memset(staging.pointer + stagingUsed, 0, length - stagingUsed)
        try file.write(from: staging.pointer, count: length, at: stagingHost)
        bytesWritten += UInt64(length)
        stagingHost += UInt64(length)
        stagingUsed = 0
        while refcounts.count < Int(stagingHost >> UInt64(geometry.clusterBits)) { refcounts.append(0) }
    }

    private func setEntry(guestCluster: UInt64, _ entry: UInt64) {
        let l1 = Int(guestCluster / UInt64(geometry.l2Entries))
        let l2 = Int(guestCluster % UInt64(geometry.l2Entries))
        if l2Tables[l1] == nil { l2Tables[l1] = Array(repeating: 0, count: geometry.l2Entries) }
        l2Tables[l1]![l2] = entry
    }

    // MARK: finishing

    /// Writes the tables and then the header, with an fsync before and after
    /// the header so that a valid header never points at unwritten tables.
    public func finish() throws {
        precondition(!finished)
        if compression == .zstd { try flushStaging() }
        let cs = geometry.clusterSize
        let bits = UInt64(geometry.clusterBits)

        // Lay out: L2 tables, the L1 table, the refcount table and its blocks.
        var l1 = [UInt64](repeating: 0, count: geometry.l1Entries)
        let l2Order = l2Tables.keys.sorted()
        let l2Start = refcounts.count
        for (i, index) in l2Order.enumerated() {
            l1[index] = UInt64(l2Start + i) << bits | Qcow2Entry.copied
        }
        refcounts += repeatElement(1, count: l2Order.count)
        let l1Clusters = max(1, geometry.clusters(for: l1.count * 8))
        let l1Start = refcounts.count
        refcounts += repeatElement(1, count: l1Clusters)
        let (blocks, tableClusters) = geometry.refcountStructures(forUsedClusters: UInt64(refcounts.count))
        let tableStart = refcounts.count
        refcounts += repeatElement(1, count: tableClusters + blocks)
        let blocksStart = tableStart + tableClusters

        // L2 tables, contiguous.
        if !l2Order.isEmpty {
            let buf = AlignedBuffer(count: l2Order.count * cs, alignment: max(4096, cs))
            for (i, index) in l2Order.enumerated() {
                storeBE64(l2Tables[index]!, into: buf.pointer + i * cs)
            }
            try file.write(from: buf.pointer, count: buf.count, at: UInt64(l2Start) << bits)
            bytesWritten += UInt64(buf.count)
        }
        // L1 table.
        let l1Buf = AlignedBuffer(count: l1Clusters * cs, alignment: max(4096, cs))
        storeBE64(l1, into: l1Buf.pointer)
        try file.write(from: l1Buf.pointer, count: l1Buf.count, at: UInt64(l1Start) << bits)
        bytesWritten += UInt64(l1Buf.count)
        // Refcount table and blocks (16-bit big-endian entries).
        let rc = AlignedBuffer(count: (tableClusters + blocks) * cs, alignment: max(4096, cs))
        let table = (0..<blocks).map { UInt64(blocksStart + $0) << bits }
        storeBE64(table, into: rc.pointer)
        let blockBase = rc.pointer + tableClusters * cs
        for (i, count) in refcounts.enumerated() {
            (blockBase + i * 2).storeBytes(of: count.bigEndian, as: UInt16.self)
        }
        try file.write(from: rc.pointer, count: rc.count, at: UInt64(tableStart) << bits)
        bytesWritten += UInt64(rc.count)
        try file.sync()

        // The header, last.
        var header = try Qcow2Header(decoding: headerBytes)
        header.l1TableOffset = UInt64(l1Start) << bits
        header.refcountTableOffset = UInt64(tableStart) << bits
        header.refcountTableClusters = UInt32(tableClusters)
        var bytes = header.encoded()
        bytes += headerBytes[bytes.count...]
        let hb = AlignedBuffer(count: headerClusters * cs, alignment: max(4096, cs))
        bytes.withUnsafeBytes { _ = memcpy(hb.pointer, $0.baseAddress!, $0.count) }
        try file.write(from: hb.pointer, count: hb.count, at: 0)
        bytesWritten += UInt64(hb.count)
        try file.sync()
        finished = true
    }

    private func storeBE64(_ values: [UInt64], into p: UnsafeMutableRawPointer) {
        for (i, v) in values.enumerated() { (p + i * 8).storeBytes(of: v.bigEndian, as: UInt64.self) }
    }
}

func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
func be64(_ v: UInt64) -> [UInt8] { be32(UInt32(v >> 32)) + be32(UInt32(v & 0xffff_ffff)) }
