import BlockIO
import Images

/// Where a backup's clusters go.
public enum BackupTarget {
    /// A qcow2 image being written.
    case qcow2(Qcow2Writer)
    /// A raw image file: zero clusters become holes.
    case rawFile(BlockFile)
    /// A raw block device: every cluster is written, zeros included, since a
    /// device has no holes to leave.
    case rawDevice(BlockFile)
}

/// The sink of a backup: per cluster it detects zeros, records the digest,
/// and turns the chunk into the writes its image format needs.
///
/// With a baseline (the digests of the previous backup in the chain) the new
/// digest file starts as a copy of it; with `skipUnchanged` (the digest
/// rescan) a cluster whose digest equals the baseline's is left out of the
/// image, so that it reads through to the backing file.
final class BackupSink: ChunkSink {
    let target: BackupTarget
    let clusterSize: Int
    let deviceSize: UInt64
    let skipUnchanged: Bool
    private let baseline: DigestFile?
    private(set) var digests: DigestFile
    private(set) var zeroBytes: UInt64 = 0
    /// Bytes of clusters left out because they equal the baseline.
    private(set) var unchangedBytes: UInt64 = 0
    /// Set for the passes after the first: a cluster may hold data from an
    /// earlier pass, so it is rewritten in place, zeros included.
    var rewriting = false

    init(target: BackupTarget, clusterSize: Int, deviceSize: UInt64, baseline: DigestFile? = nil,
         skipUnchanged: Bool = false) {
        precondition(!skipUnchanged || baseline != nil)
        self.target = target
        self.clusterSize = clusterSize
        self.deviceSize = deviceSize
        self.baseline = baseline
        self.skipUnchanged = skipUnchanged
        digests = baseline ?? DigestFile(clusterSize: clusterSize, deviceSize: deviceSize)
    }

    func plan(_ chunk: Chunk, data: UnsafeMutableRawBufferPointer) throws -> [PlannedWrite] {
        let base = data.baseAddress!
        let cs = clusterSize
        let firstCluster = Int(chunk.offset / UInt64(cs))
        let clusters = (chunk.length + cs - 1) / cs
        var writes: [PlannedWrite] = []
        var runStart = -1  // first cluster (within the chunk) of the current non-zero run

        func closeRun(at end: Int) throws {
            guard runStart >= 0 else { return }
            let count = end - runStart
            let src = UnsafeRawPointer(base + runStart * cs)
            let guest = chunk.offset + UInt64(runStart * cs)
            switch target {
            case .qcow2(let writer):
                if writer.compression == .none && rewriting {
                    writes += rewrite(writer, guest: firstCluster + runStart, count: count, source: src)
                } else if writer.compression == .none {
                    let host = writer.allocate(guestCluster: UInt64(firstCluster + runStart), count: count)
                    writes.append(PlannedWrite(targetOffset: host, source: src, length: count * cs))
                } else {
                    for i in 0..<count {
                        let len = min(cs, chunk.length - (runStart + i) * cs)
                        try writer.writeCompressed(guestCluster: UInt64(firstCluster + runStart + i),
                                                   data: src + i * cs, count: len)
                    }
                }
            case .rawFile(let file):
                // The tail past the device end is cut off by the final truncate.
                let bytes = min(count * cs, chunk.length - runStart * cs)
                let align = file.logicalBlockSize
                writes.append(PlannedWrite(targetOffset: guest, source: src, length: (bytes + align - 1) / align * align))
            case .rawDevice:
                break
            }
            runStart = -1
        }

        for i in 0..<clusters {
            let len = min(cs, chunk.length - i * cs)
            let p = base + i * cs
            let zero = ZeroScan.isZero(p, count: len)
            let digest = DigestFile.digest(of: p, count: len, isZero: zero)
            if skipUnchanged, let baseline, baseline.digest(cluster: firstCluster + i) == digest {
                unchangedBytes += UInt64(len)
                try closeRun(at: i)
                continue
            }
            digests.set(cluster: firstCluster + i, digest)
            if zero && rewriting && holdsData(cluster: firstCluster + i) {
                // Zeros over data an earlier pass wrote: write them.
                zeroBytes += UInt64(len)
                if runStart < 0 { runStart = i }
            } else if zero {
                zeroBytes += UInt64(len)
                try closeRun(at: i)
                if case .qcow2(let writer) = target { writer.markZero(guestCluster: UInt64(firstCluster + i)) }
            } else if runStart < 0 {
                runStart = i
            }
        }
        try closeRun(at: clusters)
        if case .rawDevice(let device) = target {
            let align = device.logicalBlockSize
            writes = [PlannedWrite(targetOffset: chunk.offset, source: base,
                                   length: (chunk.length + align - 1) / align * align)]
        }
        return writes
    }

    func written(_ chunk: Chunk) {}

    /// Whether an earlier pass may have left data in a cluster of the target.
    private func holdsData(cluster: Int) -> Bool {
        switch target {
        case .qcow2(let writer): writer.existingHost(guestCluster: UInt64(cluster)) != nil
        case .rawFile: true
        case .rawDevice: false
        }
    }

    /// Writes for a run of clusters in a later pass: in place where a cluster
    /// is mapped already, newly allocated where not, one write per stretch.
    private func rewrite(_ writer: Qcow2Writer, guest: Int, count: Int, source: UnsafeRawPointer) -> [PlannedWrite] {
        let cs = clusterSize
        var writes: [PlannedWrite] = []
        var i = 0
        while i < count {
            var n = 1
            if let host = writer.existingHost(guestCluster: UInt64(guest + i)) {
                while i + n < count, writer.existingHost(guestCluster: UInt64(guest + i + n)) == host + UInt64(n * cs) { n += 1 }
                writes.append(PlannedWrite(targetOffset: host, source: source + i * cs, length: n * cs))
            } else {
                while i + n < count, writer.existingHost(guestCluster: UInt64(guest + i + n)) == nil { n += 1 }
                let host = writer.allocate(guestCluster: UInt64(guest + i), count: n)
                writes.append(PlannedWrite(targetOffset: host, source: source + i * cs, length: n * cs))
            }
            i += n
        }
        return writes
    }
}
