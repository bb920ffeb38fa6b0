/// A byte range of a device.
public struct Extent: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var offset: UInt64
    public var length: UInt64
    public init(offset: UInt64, length: UInt64) { self.offset = offset; self.length = length }
    public var end: UInt64 { offset + length }
    public var description: String { "[\(offset), \(end))" }
}

/// One unit of work of the copy engine: a cluster-aligned range read into one
/// buffer and handed to the sink whole.
public struct Chunk: Equatable, Sendable {
    /// Position in the plan.
    public var index: Int
    /// Device offset; always a multiple of the cluster size.
    public var offset: UInt64
    /// Bytes of device data; a multiple of the cluster size except for the
    /// device's last, unaligned tail.
    public var length: Int
    public init(index: Int, offset: UInt64, length: Int) { self.index = index; self.offset = offset; self.length = length }
    public var end: UInt64 { offset + UInt64(length) }
}

/// Cuts the extents to copy into chunks: each extent is widened to whole
/// clusters, clipped to the device size, merged with its neighbours, and cut
/// into pieces of at most `chunkSize` bytes that start on cluster boundaries.
public struct ChunkPlan: Sendable {
    public let chunks: [Chunk]
    public let deviceSize: UInt64
    public let clusterSize: Int
    public let chunkSize: Int

    /// Total bytes the plan reads.
    public var totalBytes: UInt64 { chunks.reduce(0) { $0 + UInt64($1.length) } }

    /// A plan over the whole device.
    public init(deviceSize: UInt64, clusterSize: Int, chunkSize: Int) {
        self.init(extents: [Extent(offset: 0, length: deviceSize)], deviceSize: deviceSize,
                  clusterSize: clusterSize, chunkSize: chunkSize)
    }

    /// A plan over some extents (for incremental copies).
    public init(extents: [Extent], deviceSize: UInt64, clusterSize: Int, chunkSize: Int) {
        precondition(clusterSize > 0 && chunkSize >= clusterSize && chunkSize % clusterSize == 0)
        self.deviceSize = deviceSize
        self.clusterSize = clusterSize
        self.chunkSize = chunkSize
        let c = UInt64(clusterSize)
        let widened = extents.compactMap { e -> Extent? in
            guard e.length > 0, e.offset < deviceSize else { return nil }
            let start = e.offset / c * c
            let end = min((min(e.end, deviceSize) + c - 1) / c * c, deviceSize)
            return Extent(offset: start, length: end - start)
        }.sorted { $0.offset < $1.offset }
        var merged: [Extent] = []
        for e in widened {
            if let last = merged.last, e.offset <= last.end {
                merged[merged.count - 1].length = max(last.end, e.end) - last.offset
            } else {
                merged.append(e)
            }
        }
        var chunks: [Chunk] = []
        for e in merged {
            var offset = e.offset
            while offset < e.end {
                let n = min(UInt64(chunkSize), e.end - offset)
                chunks.append(Chunk(index: chunks.count, offset: offset, length: Int(n)))
                offset += n
            }
        }
        self.chunks = chunks
    }
}
