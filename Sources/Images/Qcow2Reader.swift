#if canImport(Glibc)
import Glibc
#endif
import BlockIO

/// A qcow2 v2/v3 image opened for reading, with its backing chain.
///
/// Opening checks the header and every L1 and L2 entry against the file, so a
/// truncated or corrupt image is refused before any data is read.
public final class Qcow2Reader: ImageReader, @unchecked Sendable {
    /// How many backing files deep a chain may go.
    public static let maxBackingChainDepth = 64

    public let path: String
    public var format: ImageFormat { .qcow2 }
    public var virtualSize: UInt64 { metadata.header.size }
    public var clusterSize: Int { metadata.geometry.clusterSize }
    /// The parsed header.
    public var header: Qcow2Header { metadata.header }
    /// The table geometry of this image.
    public var geometry: Qcow2Geometry { metadata.geometry }
    /// The backing file name as stored in the header (often relative to this image).
    public var backingFile: String? { metadata.backingFile }
    /// The opened backing image, if any.
    public let backing: ImageReader?
    /// How many images lie below this one: 0 without a backing file.
    public var backingChainDepth: Int {
        guard let backing else { return 0 }
        return 1 + ((backing as? Qcow2Reader)?.backingChainDepth ?? 0)
    }

    private let file: BlockFile
    let metadata: Qcow2Metadata
    /// Every L2 table, loaded and checked at open (a merge walks them).
    let tables: Qcow2Tables

    /// Opens the qcow2 image at `path` and its backing chain.
    public convenience init(path: String) throws {
        let file = try BlockFile(path: path, mode: .read, direct: false)
        try self.init(file: file, chain: [FileIdentity(file)])
    }

    /// `chain` holds the identities of this image and every image above it.
    init(file: BlockFile, chain: [FileIdentity]) throws {
        self.file = file
        path = file.path
        do {
            metadata = try Qcow2Metadata(file: file)
            tables = try Qcow2Tables(file: file, metadata: metadata)
        } catch let error as ImageFormatError {
            throw error.inImage(file.path)
        }
        backing = try Self.openBacking(of: file.path, metadata: metadata, chain: chain)
    }

    /// Opens the backing file named in the header, relative to the image's
    /// directory unless absolute, in the format the backing format extension
    /// names or else by probing.
    private static func openBacking(of path: String, metadata: Qcow2Metadata, chain: [FileIdentity]) throws -> ImageReader? {
        guard let name = metadata.backingFile else { return nil }
        func unusable(_ why: String) -> ImageFormatError {
            ImageFormatError.unusableBackingFile(why).inImage(path)
        }
        guard chain.count <= maxBackingChainDepth else {
            throw unusable("the backing chain is deeper than \(maxBackingChainDepth) images at '\(name)'")
        }
        var format: ImageFormat?
        if let stored = metadata.backingFormat {
            guard let known = ImageFormat(rawValue: stored) else {
                throw unusable("backing format '\(stored)' of '\(name)' is not supported (only raw and qcow2)")
            }
            format = known
        }
        let resolved = resolveBacking(name, relativeTo: path)
        do {
            return try openImage(path: resolved, format: format, chain: chain)
        } catch let error as SystemError {
            throw unusable("'\(name)': \(error)")
        } catch ImageFormatError.unusableBackingFile(let why) {
            throw unusable(why)
        }
    }

    /// An absolute name as is; a relative one from the directory of `image`.
    static func resolveBacking(_ name: String, relativeTo image: String) -> String {
        if name.hasPrefix("/") { return name }
        guard let slash = image.lastIndex(of: "/") else { return name }
        return String(image[...slash]) + name
    }

    /// The state of guest cluster `index` (below `geometry.guestClusters`) in
    /// this image alone; the backing file is not consulted.
    public func clusterState(ofGuestCluster index: UInt64) -> Qcow2ClusterState {
        precondition(index < metadata.geometry.guestClusters, "guest cluster \(index) is past the virtual size")
        return tables.state(ofCluster: index)
    }

    // MARK: Reading

    /// A stretch of the caller's buffer filled by one operation.
    private struct Run {
        enum Source: Equatable { case zero, backing, host(UInt64) }
        var source: Source
        var guest: UInt64
        var bufferOffset: Int
        var length: Int

        /// Whether `next`, starting right after this run, can join it.
        func continues(with next: Source) -> Bool {
            switch (source, next) {
            case (.zero, .zero), (.backing, .backing): true
            case (.host(let a), .host(let b)): a + UInt64(length) == b
            default: false
            }
        }
    }

    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws {
        precondition(count >= 0)
        try checkRange(offset, UInt64(count), "read")
        let bits = UInt64(metadata.geometry.clusterBits), mask = UInt64(clusterSize - 1)
        var decompressor = Qcow2Decompressor(method: metadata.compression)
        defer { decompressor.close() }
        var run: Run?
        var done = 0
        while done < count {
            let guest = offset + UInt64(done)
            let within = Int(guest & mask)
            let n = min(clusterSize - within, count - done)
            let source: Run.Source
            switch tables.state(ofCluster: guest >> bits) {
            case .unallocated: source = .backing
            case .zero: source = .zero
            case .data(let host): source = .host(host + UInt64(within))
            case .compressed(let host, let length):
                if let pending = run { try fill(pending, buffer); run = nil }
                try readCompressed(guest: guest - UInt64(within), host: host, length: length, decompressor: &decompressor,
                                   within: within, into: buffer + done, count: n)
                done += n
                continue
            }
            if var pending = run, pending.continues(with: source) {
                pending.length += n
                run = pending
            } else {
                if let pending = run { try fill(pending, buffer) }
                run = Run(source: source, guest: guest, bufferOffset: done, length: n)
            }
            done += n
        }
        if let pending = run { try fill(pending, buffer) }
    }

    private func fill(_ run: Run, _ buffer: UnsafeMutableRawPointer) throws {
        let target = buffer + run.bufferOffset
        switch run.source {
        case .zero:
            memset(target, 0, run.length)
        case .backing:
            try readBacking(guest: run.guest, into: target, count: run.length)
        case .host(let host):
            let n = try file.read(into: target, count: run.length, at: host)
            guard n == run.length else {
                throw ImageFormatError.truncated(
                    "data for guest offset \(hex(run.guest)) at host offset \(hex(host)) (\(hex(run.length)) bytes) ends at \(hex(host + UInt64(n))): the file shrank after it was opened"
                ).inImage(path)
            }
        }
    }

    /// Reads unallocated clusters from the backing file; whatever lies past
    /// the backing file's own virtual size reads as zero.
    private func readBacking(guest: UInt64, into target: UnsafeMutableRawPointer, count: Int) throws {
        var available = 0
        if let backing, guest < backing.virtualSize {
            available = Int(min(UInt64(count), backing.virtualSize - guest))
            try backing.read(into: target, count: available, at: guest)
        }
        if available < count { memset(target + available, 0, count - available) }
    }

    private func readCompressed(guest: UInt64, host: UInt64, length: Int, decompressor: inout Qcow2Decompressor,
                                within: Int, into target: UnsafeMutableRawPointer, count: Int) throws {
        // The last sector of the last compressed cluster may extend past the end of the file.
        let stored = Int(min(UInt64(length), metadata.fileSize - host))
        var input = [UInt8](repeating: 0, count: stored)
        let n = try input.withUnsafeMutableBytes { try file.read(into: $0.baseAddress!, count: stored, at: host) }
        var cluster = [UInt8](repeating: 0, count: clusterSize)
        let failure = input.withUnsafeBytes { inBuf in
            cluster.withUnsafeMutableBytes { decompressor.decompress(UnsafeRawBufferPointer(rebasing: inBuf[..<n]), into: $0) }
        }
        if let failure {
            throw ImageFormatError.corrupt(
                "compressed cluster for guest offset \(hex(guest)) at host offset \(hex(host)) (\(hex(n)) bytes read) does not decompress: \(failure)"
            ).inImage(path)
        }
        cluster.withUnsafeBytes { target.copyMemory(from: $0.baseAddress! + within, byteCount: count) }
    }

    // MARK: Mapping

    /// Clusters with data (plain or compressed) map as data, zero clusters as
    /// zero, unallocated ones as the backing file maps them (zero without one).
    public func mapping(from offset: UInt64, length: UInt64) throws -> [ImageExtent] {
        try checkRange(offset, length, "mapping")
        let g = metadata.geometry
        let bits = UInt64(g.clusterBits), perTable = UInt64(g.l2Entries)
        let end = offset + length
        var extents: [ImageExtent] = []
        var unallocatedFrom: UInt64?
        var pos = offset
        while pos < end {
            let cluster = pos >> bits
            if !tables.hasL2Table(forCluster: cluster) {
                // A whole L2 table's reach is unallocated: skip it in one step.
                if unallocatedFrom == nil { unallocatedFrom = pos }
                pos = min((cluster / perTable + 1) * perTable << bits, end)
                continue
            }
            let next = min((cluster + 1) << bits, end)
            let state = tables.state(ofCluster: cluster)
            if state == .unallocated {
                if unallocatedFrom == nil { unallocatedFrom = pos }
            } else {
                if let from = unallocatedFrom { try appendUnallocated(&extents, from, pos); unallocatedFrom = nil }
                appendMerging(&extents, ImageExtent(offset: pos, length: next - pos, kind: state == .zero ? .zero : .data))
            }
            pos = next
        }
        if let from = unallocatedFrom { try appendUnallocated(&extents, from, end) }
        return extents
    }

    private func appendUnallocated(_ extents: inout [ImageExtent], _ from: UInt64, _ to: UInt64) throws {
        var zeroFrom = from
        if let backing, from < backing.virtualSize {
            let stop = min(to, backing.virtualSize)
            for e in try backing.mapping(from: from, length: stop - from) { appendMerging(&extents, e) }
            zeroFrom = stop
        }
        appendMerging(&extents, ImageExtent(offset: zeroFrom, length: to - zeroFrom, kind: .zero))
    }
}
