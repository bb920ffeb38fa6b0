import BlockIO
import CZstd
import Foundation

/// What folding an overlay into its backing image did.
public struct Qcow2MergeSummary: Codable, Sendable, Equatable {
    /// Clusters the overlay allocated (data, compressed or zero), all folded in.
    public var clusters: Int = 0
    /// Of those, written as data (uncompressed or compressed).
    public var dataClusters: Int = 0
    /// Written compressed (a zstd base keeps its merged clusters compressed).
    public var compressedClusters: Int = 0
    /// Overwrote the base's own data cluster where it lay.
    public var inPlaceClusters: Int = 0
    /// Read as zero in the result (zero clusters, and data that was all zeros).
    public var zeroClusters: Int = 0
    /// Bytes written to the base: data and metadata.
    public var bytesWritten: UInt64 = 0
    /// Host clusters of the base that the result no longer uses (given back
    /// to the filesystem where it can punch holes).
    public var freedClusters: Int = 0
    public var seconds: Double = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case clusters, seconds
        case dataClusters = "data_clusters", compressedClusters = "compressed_clusters"
        case inPlaceClusters = "in_place_clusters", zeroClusters = "zero_clusters"
        case bytesWritten = "bytes_written", freedClusters = "freed_clusters"
    }
}

/// Folds a qcow2 overlay's allocated clusters into its backing image, which
/// must be the first image of its chain (no backing file of its own): what
/// `qemu-img commit` does, written for ringback's crash-safety needs.
///
/// After the merge the base reads exactly as the overlay did; the overlay
/// itself is not changed (the caller removes it).
///
/// Crash safety. The base is never in a state that a qcow2 reader would take
/// for something other than either its old tables or its new ones:
///
/// 1. Data goes first. An overlay cluster whose base cluster is plain data
///    referenced once is written over it in place; every other cluster goes
///    to a host cluster that the committed (old) tables do not use. Neither
///    changes a byte the old tables show through the overlay: the overlay
///    hides exactly the guest clusters being written. (The base seen alone
///    does change — its own point in time is given up by the merge.)
/// 2. The new L2 tables (only those that change), a new L1 table and new
///    refcount structures, computed from the whole new structure, are written
///    to clusters the old tables do not use, and fsynced.
/// 3. One write of the header's first sector points at the new L1 and
///    refcount tables (l1_table_offset, refcount_table_offset and
///    refcount_table_clusters all lie in bytes 40–59), then fsync. A sector
///    write is the unit a disk completes whole: before it the old tables
///    rule, after it the new ones, and both are consistent (no leak, no
///    reference without a refcount).
/// 4. Only then are the clusters the new state no longer uses punched out.
///
/// Every step may be repeated from the start after a crash: redoing the
/// merge over an already merged base writes the same bytes again.
public final class Qcow2Merge {
    public let top: String
    public let base: String
    private let topReader: Qcow2Reader
    private let baseFile: BlockFile
    private let baseMetadata: Qcow2Metadata
    private let baseTables: Qcow2Tables
    private let layout: Qcow2Layout
    /// References per host cluster of the committed base (padded to the file's end).
    private let committed: [UInt32]

    /// Opens the overlay (with its chain) and the base, and checks that the
    /// overlay's backing file is the base, that both have one geometry, and
    /// that the base's refcounts agree with its tables. Writes nothing.
    public init(top: String, into base: String) throws {
        self.top = top
        self.base = base
        topReader = try Qcow2Reader(path: top)
        guard let backing = topReader.backing as? Qcow2Reader else {
            throw MergeError("\(top) has no qcow2 backing file to merge into")
        }
        guard Self.sameFile(backing.path, base) else {
            throw MergeError("the backing file of \(top) is \(backing.path), not \(base)")
        }
        baseFile = try BlockFile(path: base, mode: .write, direct: false)
        do {
            baseMetadata = try Qcow2Metadata(file: baseFile)
            let h = baseMetadata.header
            if let name = baseMetadata.backingFile {
                throw ImageFormatError.unsupported("it has a backing file ('\(name)'); only the first image of a chain can take a merge")
            }
            guard h.version == 3 else { throw ImageFormatError.unsupported("merging into a version \(h.version) image") }
            guard h.refcountOrder == 4 else {
                throw ImageFormatError.unsupported("refcounts of \(1 << h.refcountOrder) bits (merging needs 16-bit refcounts)")
            }
            guard h.nbSnapshots == 0 else { throw ImageFormatError.unsupported("it has \(h.nbSnapshots) internal snapshots") }
            guard h.autoclearFeatures == 0 else {
                throw ImageFormatError.unsupported("autoclear features \(hex(h.autoclearFeatures)) (e.g. persistent bitmaps) are set")
            }
            guard baseMetadata.geometry.clusterBits == topReader.geometry.clusterBits,
                  h.size == topReader.virtualSize else {
                throw ImageFormatError.unsupported("its cluster size (\(h.clusterSize)) or virtual size (\(h.size)) differs from "
                    + "the overlay's (\(topReader.clusterSize), \(topReader.virtualSize))")
            }
            baseTables = try Qcow2Tables(file: baseFile, metadata: baseMetadata)
            layout = try Qcow2Layout(file: baseFile, metadata: baseMetadata, tables: baseTables)
            var refs = layout.references(decode: baseTables.decode)
            let onDisk = try layout.onDiskRefcounts(baseFile)
            for c in 0..<max(refs.count, onDisk.count) {
                let counted = c < refs.count ? refs[c] : 0, recorded = c < onDisk.count ? onDisk[c] : 0
                guard counted == recorded else {
                    throw ImageFormatError.corrupt("host cluster \(c) has refcount \(recorded) but \(counted) references; "
                        + "check the image with 'qemu-img check' before merging into it")
                }
            }
            let fileClusters = Int((baseFile.size + UInt64(layout.clusterSize) - 1) >> layout.clusterBits)
            if refs.count < fileClusters { refs += repeatElement(0, count: fileClusters - refs.count) }
            committed = refs
        } catch let error as ImageFormatError {
            throw error.inImage(base)
        }
    }

    private static func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    /// Runs the merge. `checkpoint` is called with "data-written",
    /// "tables-written" and "committed" as each step is durable (tests stop
    /// the process there to prove that a crash at that point is harmless).
    public func run(progress: CopyControl = CopyControl(), checkpoint: (String) -> Void = { _ in }) throws -> Qcow2MergeSummary {
        let started = Date()
        var state = MergeState(layout: layout, committed: committed, file: baseFile,
                               compress: baseMetadata.header.compressionType == 1)
        let topTables = topReader.tables
        let perTable = UInt64(layout.geometry.l2Entries)
        let guestClusters = layout.geometry.guestClusters
        let cs = layout.clusterSize
        let allocated = topTables.l2.reduce(0) { n, t in
            n + (t?.reduce(0) { $0 + (topTables.decode($1) == .unallocated ? 0 : 1) } ?? 0)
        }
        progress.start(total: UInt64(allocated) * UInt64(cs))
        let runLimit = max(1, (1 << 20) / cs)
        let buffer = AlignedBuffer(count: runLimit * cs, alignment: 4096)

        for (l1, table) in topTables.l2.enumerated() {
            guard let table else { continue }
            var j = 0
            while j < table.count {
                let guest = UInt64(l1) * perTable + UInt64(j)
                guard guest < guestClusters else { break }
                switch topTables.decode(table[j]) {
                case .unallocated:
                    j += 1
                case .zero:
                    state.setZero(guest)
                    progress.didFinish(cs)
                    j += 1
                case .data, .compressed:
                    // A run of clusters with data, read through the overlay in one call.
                    var n = 1
                    while n < runLimit, j + n < table.count, guest + UInt64(n) < guestClusters {
                        let s = topTables.decode(table[j + n])
                        guard s != .unallocated && s != .zero else { break }
                        n += 1
                    }
                    let offset = guest * UInt64(cs)
                    let count = Int(min(UInt64(n * cs), topReader.virtualSize - offset))
                    if count < n * cs { memset(buffer.pointer + count, 0, n * cs - count) }
                    try topReader.read(into: buffer.pointer, count: count, at: offset)
                    for k in 0..<n {
                        try state.setData(guest + UInt64(k), buffer.pointer + k * cs)
                    }
                    try state.flushWrites()
                    progress.didFinish(n * cs)
                    j += n
                }
            }
        }
        try state.flushCompressed()
        try baseFile.sync()
        checkpoint("data-written")

        try state.commit(checkpoint: checkpoint)
        var summary = state.summary
        summary.clusters = allocated
        summary.seconds = Date().timeIntervalSince(started)
        return summary
    }
}

/// A merge that cannot be done; the text names the images and the reason.
public struct MergeError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The base's new tables while the merge runs, the writes not yet issued,
/// and how the new state is committed.
private struct MergeState {
    var layout: Qcow2Layout
    let committed: [UInt32]
    let file: BlockFile
    let compress: Bool
    var allocator: Qcow2ClusterAllocator
    var changed = Set<Int>()
    var summary = Qcow2MergeSummary()
    /// Consecutive uncompressed writes, issued as one.
    private var pendingHost: UInt64 = 0
    private var pendingSource: UnsafeRawPointer?
    private var pendingLength = 0
    /// Compressed streams waiting for a run of host clusters.
    private var compressor: ZstdClusterCompressor?
    private var staging: [UInt8] = []
    private var staged: [(guest: UInt64, offset: Int, length: Int)] = []

    init(layout: Qcow2Layout, committed: [UInt32], file: BlockFile, compress: Bool) {
        self.layout = layout
        self.committed = committed
        self.file = file
        self.compress = compress
        allocator = Qcow2ClusterAllocator(committed: committed, fileClusters: committed.count)
        if compress { compressor = ZstdClusterCompressor(clusterSize: layout.clusterSize) }
    }

    var cs: Int { layout.clusterSize }
    var bits: UInt64 { layout.clusterBits }

    func entry(_ guest: UInt64) -> UInt64 {
        let per = UInt64(layout.geometry.l2Entries)
        return layout.l2[Int(guest / per)]?[Int(guest % per)] ?? 0
    }

    mutating func set(_ guest: UInt64, _ value: UInt64) {
        let per = UInt64(layout.geometry.l2Entries)
        let l1 = Int(guest / per), j = Int(guest % per)
        if layout.l2[l1] == nil {
            if value == 0 { return }
            layout.l2[l1] = [UInt64](repeating: 0, count: layout.geometry.l2Entries)
        }
        if layout.l2[l1]![j] != value {
            layout.l2[l1]![j] = value
            changed.insert(l1)
        }
    }

    /// The base has no backing file, so an unallocated cluster reads zero.
    mutating func setZero(_ guest: UInt64) {
        summary.zeroClusters += 1
        if entry(guest) != Qcow2Entry.zero { set(guest, 0) }
    }

    mutating func setData(_ guest: UInt64, _ data: UnsafeRawPointer) throws {
        if ZeroScan.isZero(data, count: cs) { setZero(guest); return }
        summary.dataClusters += 1
        if let compressor, let stream = compressor.compress(data) {
            summary.compressedClusters += 1
            staged.append((guest, staging.count, stream.count))
            staging += stream
            if staging.count >= 1 << 20 { try flushCompressed() }
            return
        }
        let old = entry(guest)
        let oldHost = old & Qcow2Entry.offsetMask
        let host: UInt64
        let plainData = old & (Qcow2Entry.compressed | Qcow2Entry.zero) == 0 && oldHost != 0
        if plainData && committed[Int(oldHost >> bits)] == 1 {
            // The base's own cluster, used by nothing else: overwrite it.
            host = oldHost
            summary.inPlaceClusters += 1
        } else {
            host = UInt64(allocator.allocate()) << bits
            set(guest, host | Qcow2Entry.copied)
        }
        if let source = pendingSource, pendingHost + UInt64(pendingLength) == host, source + pendingLength == data {
            pendingLength += cs
        } else {
            try flushWrites()
            pendingHost = host
            pendingSource = data
            pendingLength = cs
        }
    }

    mutating func flushWrites() throws {
        guard let source = pendingSource else { return }
        try file.write(from: source, count: pendingLength, at: pendingHost)
        summary.bytesWritten += UInt64(pendingLength)
        pendingSource = nil
        pendingLength = 0
    }

    /// Writes the staged compressed streams into a fresh run of host clusters
    /// and maps them (qcow2.txt "Compressed Clusters Descriptor").
    mutating func flushCompressed() throws {
        guard !staging.isEmpty else { return }
        let clusters = (staging.count + cs - 1) / cs
        staging += [UInt8](repeating: 0, count: clusters * cs - staging.count)
        let host = UInt64(allocator.allocate(clusters)) << bits
        try staging.withUnsafeBytes { try file.write(from: $0.baseAddress!, count: $0.count, at: host) }
        summary.bytesWritten += UInt64(staging.count)
        let x = UInt64(62 - (layout.geometry.clusterBits - 8))
        for s in staged {
            let offset = host + UInt64(s.offset)
            let sectors = (offset + UInt64(s.length) - 1) >> 9 - offset >> 9
            set(s.guest, Qcow2Entry.compressed | sectors << x | offset)
        }
        staging = []
        staged = []
    }

    /// Writes the new tables where the old ones do not lie and switches the
    /// header to them; then frees what only the old state used. Returns
    /// false when nothing changed (an empty overlay, or a repeated merge).
    @discardableResult
    mutating func commit(checkpoint: (String) -> Void) throws -> Bool {
        let clusterBits = layout.geometry.clusterBits
        let decode = { (e: UInt64) -> Qcow2ClusterState in Self.decode(e, bits: clusterBits) }
        fixCopiedFlags()
        guard !changed.isEmpty else { return false }
        var new = layout
        for l1 in changed.sorted() {
            if new.l2[l1]!.allSatisfy({ $0 == 0 }) {
                new.l2[l1] = nil
                new.l2Offsets[l1] = 0
            } else {
                new.l2Offsets[l1] = UInt64(allocator.allocate()) << bits
            }
        }
        new.l1Offset = UInt64(allocator.allocate(new.l1Clusters)) << bits
        let (blocks, tableClusters) = new.geometry.refcountStructures(forUsedClusters: UInt64(allocator.end))
        new.refcountTableOffset = UInt64(allocator.allocate(tableClusters)) << bits
        new.refcountTableClusters = tableClusters
        new.refcountBlocks = (0..<blocks).map { _ in UInt64(allocator.allocate()) << bits }
        let refs = new.references(decode: decode)
        let perBlock = new.geometry.refcountsPerBlock
        guard refs.count <= blocks * perBlock, refs.allSatisfy({ $0 <= UInt32(UInt16.max) }) else {
            throw MergeError("cannot lay out the refcounts of \(file.path): \(refs.count) clusters for \(blocks) blocks")
        }

        for l1 in changed.sorted() {
            guard let table = new.l2[l1] else { continue }
            try writeBE64(table, clusters: 1, at: new.l2Offsets[l1])
        }
        let l1 = (0..<new.l1Size).map { new.l2Offsets[$0] == 0 ? 0 : new.l2Offsets[$0] | Qcow2Entry.copied }
        try writeBE64(l1, clusters: new.l1Clusters, at: new.l1Offset)
        var block = [UInt8](repeating: 0, count: cs)
        for (b, offset) in new.refcountBlocks.enumerated() {
            for j in 0..<perBlock {
                let c = b * perBlock + j
                let v = c < refs.count ? UInt16(refs[c]) : 0
                block[2 * j] = UInt8(v >> 8)
                block[2 * j + 1] = UInt8(v & 0xff)
            }
            try block.withUnsafeBytes { try file.write(from: $0.baseAddress!, count: cs, at: offset) }
            summary.bytesWritten += UInt64(cs)
        }
        try writeBE64(new.refcountBlocks, clusters: tableClusters, at: new.refcountTableOffset)
        try file.sync()
        checkpoint("tables-written")

        try switchHeader(to: new)
        checkpoint("committed")
        layout = new
        try release(refs)
        return true
    }

    /// Standard L2 entries carry QCOW_OFLAG_COPIED exactly when their host
    /// cluster is referenced once (qemu-img check insists). Merging can only
    /// drop references, so a cluster once shared may now need the flag.
    mutating func fixCopiedFlags() {
        // Two bytes per host cluster; a count saturates, which is all "not once" needs.
        var dataRefs = [UInt16](repeating: 0, count: allocator.end)
        for table in layout.l2 {
            for e in table ?? [] where e & Qcow2Entry.compressed == 0 && e & Qcow2Entry.offsetMask != 0 {
                let c = Int((e & Qcow2Entry.offsetMask) >> bits)
                if c < dataRefs.count && dataRefs[c] < 2 { dataRefs[c] += 1 }
            }
        }
        let per = UInt64(layout.geometry.l2Entries)
        for (l1, table) in layout.l2.enumerated() {
            guard let table else { continue }
            for (j, e) in table.enumerated() where e & Qcow2Entry.compressed == 0 && e & Qcow2Entry.offsetMask != 0 {
                let c = Int((e & Qcow2Entry.offsetMask) >> bits)
                let once = c < dataRefs.count && dataRefs[c] == 1
                let fixed = once ? e | Qcow2Entry.copied : e & ~Qcow2Entry.copied
                if fixed != e { set(UInt64(l1) * per + UInt64(j), fixed) }
            }
        }
    }

    private mutating func writeBE64(_ values: [UInt64], clusters: Int, at offset: UInt64) throws {
        var bytes = [UInt8](repeating: 0, count: clusters * cs)
        bytes.withUnsafeMutableBytes { p in
            for (i, v) in values.enumerated() { p.storeBytes(of: v.bigEndian, toByteOffset: i * 8, as: UInt64.self) }
        }
        try bytes.withUnsafeBytes { try file.write(from: $0.baseAddress!, count: $0.count, at: offset) }
        summary.bytesWritten += UInt64(bytes.count)
    }

    /// Rewrites the header's first sector with the new table offsets in one
    /// write, fsynced: the commit point of the merge.
    private mutating func switchHeader(to new: Qcow2Layout) throws {
        var sector = [UInt8](repeating: 0, count: 512)
        let n = try sector.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: 512, at: 0) }
        guard n == 512 else { throw MergeError("cannot read the header of \(file.path): the file is shorter than one sector") }
        sector.withUnsafeMutableBytes { p in
            p.storeBytes(of: new.l1Offset.bigEndian, toByteOffset: 40, as: UInt64.self)
            p.storeBytes(of: new.refcountTableOffset.bigEndian, toByteOffset: 48, as: UInt64.self)
            p.storeBytes(of: UInt32(new.refcountTableClusters).bigEndian, toByteOffset: 56, as: UInt32.self)
        }
        try sector.withUnsafeBytes { try file.write(from: $0.baseAddress!, count: 512, at: 0) }
        summary.bytesWritten += 512
        try file.sync()
    }

    /// Punches out the clusters that only the old state used and cuts off a
    /// free tail. Safe only after the header switch.
    private mutating func release(_ refs: [UInt32]) throws {
        func used(_ c: Int) -> Bool { c < refs.count && refs[c] > 0 }
        var c = 0
        while c < committed.count {
            guard committed[c] > 0 && !used(c) else { c += 1; continue }
            var n = 1
            while c + n < committed.count && committed[c + n] > 0 && !used(c + n) { n += 1 }
            summary.freedClusters += n
            try ImageSys.punchHole(file.fd, UInt64(c) << bits, UInt64(n) << bits, path: file.path)
            c += n
        }
        let last = refs.lastIndex { $0 > 0 } ?? 0
        let end = UInt64(last + 1) << bits
        if file.size > end {
            try file.truncate(to: end)
            try file.sync()
        }
    }

    /// An L2 entry's meaning in a version 3 image (the base always is one).
    static func decode(_ entry: UInt64, bits: Int) -> Qcow2ClusterState {
        if entry & Qcow2Entry.compressed != 0 {
            let shift = UInt64(62 - (bits - 8))
            let host = entry & ((1 << shift) - 1)
            let sectors = ((entry & ~(Qcow2Entry.copied | Qcow2Entry.compressed)) >> shift) + 1
            return .compressed(hostOffset: host, length: Int(sectors * 512 - (host & 511)))
        }
        if entry & Qcow2Entry.zero != 0 { return .zero }
        let host = entry & Qcow2Entry.offsetMask
        return host == 0 ? .unallocated : .data(hostOffset: host)
    }
}

/// zstd compression of one cluster, as QEMU stores it: a stream that does not
/// save at least a sector is not worth a compressed descriptor.
final class ZstdClusterCompressor {
    private let context: OpaquePointer?
    private var scratch: [UInt8]
    let clusterSize: Int

    init(clusterSize: Int) {
        self.clusterSize = clusterSize
        context = ZSTD_createCCtx()
        scratch = [UInt8](repeating: 0, count: ZSTD_compressBound(clusterSize))
    }

    deinit { ZSTD_freeCCtx(context) }

    /// The compressed stream, or nil when the cluster should stay uncompressed.
    func compress(_ data: UnsafeRawPointer) -> [UInt8]? {
        let n = scratch.withUnsafeMutableBytes { ZSTD_compressCCtx(context, $0.baseAddress, $0.count, data, clusterSize, 1) }
        guard ZSTD_isError(n) == 0, n < clusterSize - 512 else { return nil }
        return Array(scratch[..<n])
    }
}
