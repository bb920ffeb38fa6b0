import BlockIO

/// Where every piece of a qcow2 image's metadata lies, and how often each
/// host cluster is referenced by it: the model an in-place rewrite of an
/// image is planned on (qcow2.txt "Host cluster management").
///
/// References are counted from the structure itself (header, L1, L2 and
/// refcount tables, data and compressed clusters), never trusted from the
/// refcount blocks; `onDiskRefcounts` reads those so the two can be compared.
struct Qcow2Layout {
    let geometry: Qcow2Geometry
    /// The header cluster(s): cluster 0 holds the header, its extensions and
    /// the backing file name.
    var headerClusters = 1
    var l1Offset: UInt64
    /// L1 entries, as many as the header's l1_size.
    var l1Size: Int
    /// L2 tables in host byte order by L1 index (nil: no table), and where
    /// each one is stored.
    var l2: [[UInt64]?]
    var l2Offsets: [UInt64]
    var refcountTableOffset: UInt64
    var refcountTableClusters: Int
    /// Host offsets of the refcount blocks, by refcount table index (0: none).
    var refcountBlocks: [UInt64]

    var clusterBits: UInt64 { UInt64(geometry.clusterBits) }
    var clusterSize: Int { geometry.clusterSize }

    /// The layout of an opened image. Reads the refcount table; everything
    /// else comes from what the reader already checked.
    init(file: BlockFile, metadata: Qcow2Metadata, tables: Qcow2Tables) throws {
        let h = metadata.header
        geometry = metadata.geometry
        l1Offset = h.l1TableOffset
        l1Size = Int(h.l1Size)
        l2 = tables.l2
        l2Offsets = try Self.readL1Offsets(file, at: h.l1TableOffset, count: Int(h.l1Size))
        refcountTableOffset = h.refcountTableOffset
        refcountTableClusters = Int(h.refcountTableClusters)
        let entries = refcountTableClusters * geometry.clusterSize / 8
        let table = try Self.readBE64(file, at: h.refcountTableOffset, count: entries)
        let cs = UInt64(geometry.clusterSize)
        for (i, e) in table.enumerated() where e != 0 {
            // Bits 0-8 are reserved; a block must lie inside the file.
            guard e & 0x1FF == 0, e % cs == 0, e <= metadata.fileSize, cs <= metadata.fileSize - e else {
                throw ImageFormatError.corrupt("refcount table entry \(i) is \(hex(e)): not a cluster inside the file")
            }
        }
        refcountBlocks = table
    }

    private static func readL1Offsets(_ file: BlockFile, at offset: UInt64, count: Int) throws -> [UInt64] {
        try readBE64(file, at: offset, count: count).map { $0 & Qcow2Entry.l1OffsetMask }
    }

    static func readBE64(_ file: BlockFile, at offset: UInt64, count: Int) throws -> [UInt64] {
        guard count > 0 else { return [] }
        var values = [UInt64](repeating: 0, count: count)
        let n = try values.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: $0.count, at: offset) }
        guard n == count * 8 else {
            throw ImageFormatError.truncated("table at host offset \(hex(offset)) (\(hex(count * 8)) bytes) ends early")
        }
        return values.map { UInt64(bigEndian: $0) }
    }

    /// Clusters the L1 table occupies.
    var l1Clusters: Int { max(1, geometry.clusters(for: l1Size * 8)) }

    /// Host clusters that a compressed L2 entry's stream touches, as qemu-img
    /// check counts them: from the sector the stream starts in to the end of
    /// its last sector.
    func compressedClusters(hostOffset: UInt64, length: Int) -> ClosedRange<Int> {
        let first = Int(hostOffset >> clusterBits)
        let last = Int((hostOffset + UInt64(length) - 1) >> clusterBits)
        return first...last
    }

    /// How many references each host cluster has, index = host cluster.
    /// Counts may exceed 16 bits only in a corrupt image; the caller checks.
    func references(decode: (UInt64) -> Qcow2ClusterState) -> [UInt32] {
        var refs: [UInt32] = []
        func add(_ cluster: Int) {
            if cluster >= refs.count { refs += repeatElement(0, count: cluster - refs.count + 1) }
            refs[cluster] += 1
        }
        for c in 0..<headerClusters { add(c) }
        if l1Size > 0 {
            let first = Int(l1Offset >> clusterBits)
            for c in first..<(first + l1Clusters) { add(c) }
        }
        let tableFirst = Int(refcountTableOffset >> clusterBits)
        for c in tableFirst..<(tableFirst + refcountTableClusters) { add(c) }
        for block in refcountBlocks where block != 0 { add(Int(block >> clusterBits)) }
        for (i, table) in l2.enumerated() {
            guard let table else { continue }
            add(Int(l2Offsets[i] >> clusterBits))
            for entry in table {
                switch decode(entry) {
                case .unallocated, .zero:
                    // A preallocated zero cluster still owns its host cluster.
                    let host = entry & Qcow2Entry.offsetMask
                    if entry & Qcow2Entry.compressed == 0 && host != 0 { add(Int(host >> clusterBits)) }
                case .data(let host):
                    add(Int(host >> clusterBits))
                case .compressed(let host, let length):
                    for c in compressedClusters(hostOffset: host, length: length) { add(c) }
                }
            }
        }
        return refs
    }

    /// The refcounts the image's refcount blocks record (16-bit only), as
    /// many as the blocks cover.
    func onDiskRefcounts(_ file: BlockFile) throws -> [UInt32] {
        let perBlock = geometry.refcountsPerBlock
        // Up to the last block there is: the table itself is mostly empty.
        let blocks = (refcountBlocks.lastIndex { $0 != 0 } ?? -1) + 1
        var counts = [UInt32](repeating: 0, count: blocks * perBlock)
        var block = [UInt16](repeating: 0, count: perBlock)
        for (i, offset) in refcountBlocks.prefix(blocks).enumerated() where offset != 0 {
            let n = try block.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: $0.count, at: offset) }
            guard n == perBlock * 2 else {
                throw ImageFormatError.truncated("refcount block \(i) at host offset \(hex(offset)) ends early")
            }
            for j in 0..<perBlock { counts[i * perBlock + j] = UInt32(UInt16(bigEndian: block[j])) }
        }
        return counts
    }
}

/// Allocation of host clusters for an image that is being rewritten while
/// its committed state stays valid: only clusters that the committed state
/// does not reference are handed out (first fit, then past the end), and
/// none twice.
struct Qcow2ClusterAllocator {
    /// Committed references per cluster (index = host cluster).
    private let committed: [UInt32]
    /// Clusters handed out by this allocator below `committed.count`.
    private var taken: [Bool]
    /// First cluster not known to be used: where a first-fit search starts.
    private var cursor = 0
    /// One past the highest cluster in use or handed out.
    private(set) var end: Int

    init(committed: [UInt32], fileClusters: Int) {
        self.committed = committed
        taken = [Bool](repeating: false, count: committed.count)
        end = max(fileClusters, committed.count)
    }

    func isFree(_ c: Int) -> Bool { c >= committed.count || (committed[c] == 0 && !taken[c]) }

    /// `count` consecutive clusters; returns the first.
    mutating func allocate(_ count: Int = 1) -> Int {
        precondition(count >= 1)
        var c = cursor
        // Search the committed range for a free run; past it everything is new.
        while c + count <= committed.count {
            if !isFree(c) { c += 1; continue }
            var n = 1
            while n < count && isFree(c + n) { n += 1 }
            if n == count { return take(c, count) }
            c += n
        }
        return take(max(end, committed.count), count)
    }

    private mutating func take(_ first: Int, _ count: Int) -> Int {
        for c in first..<(first + count) where c < taken.count { taken[c] = true }
        end = max(end, first + count)
        if first == cursor {
            while cursor < committed.count && !isFree(cursor) { cursor += 1 }
        }
        return first
    }
}
