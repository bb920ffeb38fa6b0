import BlockIO

/// Where a guest cluster's bytes come from, as its L2 entry says.
public enum Qcow2ClusterState: Equatable, Sendable {
    /// Not in this image: read from the backing file, or zeros without one.
    case unallocated
    /// Reads as zero (the zero flag, with or without preallocated space).
    case zero
    /// A whole host cluster at `hostOffset`.
    case data(hostOffset: UInt64)
    /// A compressed stream starting at `hostOffset`, at most `length` bytes
    /// (whole sectors, so the stream may end before).
    case compressed(hostOffset: UInt64, length: Int)
}

/// The L1 table and every L2 table of a qcow2 image, loaded and checked
/// entry by entry at open time, so that a truncated or corrupt image is
/// refused before anything is read from it, let alone written elsewhere.
struct Qcow2Tables: Sendable {
    let geometry: Qcow2Geometry
    let version: UInt32
    let fileSize: UInt64
    /// L2 tables in host byte order, indexed by L1 index; nil where the L1
    /// entry is zero (no L2 table: all its clusters unallocated).
    let l2: [[UInt64]?]

    /// L1 entry bits that must be zero: 0–8 and 56–62.
    static let l1Reserved: UInt64 = ~(Qcow2Entry.l1OffsetMask | Qcow2Entry.copied)
    /// Standard L2 entry bits that must be zero: 1–8 and 56–61.
    static let l2Reserved: UInt64 = 0x3F00_0000_0000_01FE

    /// Reads the tables `metadata` describes. Errors do not yet name the path.
    init(file: BlockFile, metadata: Qcow2Metadata) throws {
        let h = metadata.header
        geometry = metadata.geometry
        version = h.version
        fileSize = metadata.fileSize
        let cs = UInt64(geometry.clusterSize)
        let l1 = try Self.readTable(file, at: h.l1TableOffset, entries: Int(h.l1Size))
        var l2: [[UInt64]?] = []
        l2.reserveCapacity(l1.count)
        for (i, entry) in l1.enumerated() {
            let guest = UInt64(i) * UInt64(geometry.l2Entries) * cs
            guard entry & Self.l1Reserved == 0 else {
                throw ImageFormatError.corrupt("L1 table entry \(i) (guest offset \(hex(guest))) is \(hex(entry)), with reserved bits set")
            }
            let offset = entry & Qcow2Entry.l1OffsetMask
            if offset == 0 { l2.append(nil); continue }
            guard offset % cs == 0 else {
                throw ImageFormatError.corrupt("L1 table entry \(i) (guest offset \(hex(guest))) points to an L2 table at host offset \(hex(offset)), which is not aligned to the cluster size \(hex(cs))")
            }
            guard offset <= fileSize, cs <= fileSize - offset else {
                throw ImageFormatError.truncated("the L2 table of L1 table entry \(i) (guest offset \(hex(guest))) at host offset \(hex(offset)) lies beyond the end of the file (\(hex(fileSize)) bytes)")
            }
            l2.append(try Self.readTable(file, at: offset, entries: geometry.l2Entries))
        }
        self.l2 = l2
        for (i, table) in l2.enumerated() {
            guard let table else { continue }
            for (j, entry) in table.enumerated() { try check(entry, l1Index: i, l2Index: j) }
        }
    }

    private static func readTable(_ file: BlockFile, at offset: UInt64, entries: Int) throws -> [UInt64] {
        guard entries > 0 else { return [] }
        var table = [UInt64](repeating: 0, count: entries)
        let n = try table.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: $0.count, at: offset) }
        guard n == entries * 8 else {
            throw ImageFormatError.truncated("table at host offset \(hex(offset)) (\(hex(entries * 8)) bytes) ends early, at \(hex(offset + UInt64(n)))")
        }
        for i in table.indices { table[i] = UInt64(bigEndian: table[i]) }
        return table
    }

    /// The state of guest cluster `cluster` (which must be below the L1 table's reach).
    func state(ofCluster cluster: UInt64) -> Qcow2ClusterState {
        let perTable = UInt64(geometry.l2Entries)
        guard let table = l2[Int(cluster / perTable)] else { return .unallocated }
        return decode(table[Int(cluster % perTable)])
    }

    /// Whether the L2 table covering `cluster` exists; if not, the clusters up
    /// to the next multiple of `l2Entries` are all unallocated.
    func hasL2Table(forCluster cluster: UInt64) -> Bool { l2[Int(cluster / UInt64(geometry.l2Entries))] != nil }

    /// Bit position where the compressed sector count starts (qcow2.txt: x = 62 - (cluster_bits - 8)).
    private var compressedShift: UInt64 { UInt64(62 - (geometry.clusterBits - 8)) }

    /// Decodes an L2 entry that `check` accepted.
    func decode(_ entry: UInt64) -> Qcow2ClusterState {
        if entry & Qcow2Entry.compressed != 0 {
            let host = entry & ((1 << compressedShift) - 1)
            let sectors = ((entry & ~(Qcow2Entry.copied | Qcow2Entry.compressed)) >> compressedShift) + 1
            return .compressed(hostOffset: host, length: Int(sectors * 512 - (host & 511)))
        }
        if entry & Qcow2Entry.zero != 0 && version >= 3 { return .zero }
        let host = entry & Qcow2Entry.offsetMask
        return host == 0 ? .unallocated : .data(hostOffset: host)
    }

    /// Refuses an L2 entry with reserved bits set, a misaligned host offset or
    /// one that points past the end of the file.
    func check(_ entry: UInt64, l1Index: Int, l2Index: Int) throws(ImageFormatError) {
        let cs = UInt64(geometry.clusterSize)
        let guest = (UInt64(l1Index) * UInt64(geometry.l2Entries) + UInt64(l2Index)) * cs
        let place = "guest offset \(hex(guest)) (L1 index \(l1Index), L2 index \(l2Index))"
        if entry & Qcow2Entry.compressed != 0 {
            guard entry & Qcow2Entry.copied == 0 else {
                throw .corrupt("compressed cluster for \(place) has the COPIED flag set (L2 entry \(hex(entry)))")
            }
            guard case .compressed(let host, let length) = decode(entry) else { return }
            guard host >> 56 == 0 else {
                throw .corrupt("compressed cluster for \(place) has reserved host offset bits set (L2 entry \(hex(entry)))")
            }
            // The stream may end anywhere in its last sector, and the file with
            // it, so only the start of the last sector must lie in the file.
            let lastSector = (host & ~511) + UInt64(length + Int(host & 511) - 512)
            guard host >= cs else {
                throw .corrupt("compressed cluster for \(place) at host offset \(hex(host)) lies inside the image header")
            }
            guard lastSector < fileSize else {
                throw .truncated("compressed cluster for \(place) at host offset \(hex(host)) (up to \(hex(length)) bytes) lies beyond the end of the file (\(hex(fileSize)) bytes)")
            }
            return
        }
        guard entry & Self.l2Reserved == 0 else {
            throw .corrupt("L2 entry for \(place) is \(hex(entry)), with reserved bits set")
        }
        if entry & Qcow2Entry.zero != 0 && version < 3 {
            throw .corrupt("L2 entry for \(place) is \(hex(entry)): the zero flag is reserved in version 2 images")
        }
        let host = entry & Qcow2Entry.offsetMask
        if host == 0 {
            guard entry & Qcow2Entry.copied == 0 else {
                throw .corrupt("L2 entry for \(place) is \(hex(entry)): COPIED flag without a host offset")
            }
            return
        }
        let what = entry & Qcow2Entry.zero != 0 ? "preallocated zero cluster" : "data cluster"
        guard host % cs == 0 else {
            throw .corrupt("\(what) for \(place) at host offset \(hex(host)) is not aligned to the cluster size \(hex(cs))")
        }
        guard host <= fileSize, cs <= fileSize - host else {
            throw .truncated("\(what) for \(place) at host offset \(hex(host)) lies beyond the end of the file (\(hex(fileSize)) bytes)")
        }
    }
}
