import BlockIO
import CXXHash
import Foundation

/// One digest per cluster of a backup, kept beside the image as `IMAGE.digests`
/// (DESIGN §8). It lets `verify` check an image without its source and lets a
/// digest rescan find the clusters that changed since the backup.
///
/// Digests are XXH3-128 of the cluster's bytes (the last cluster: only the bytes
/// inside the device). An all-zero cluster is recorded as 16 zero bytes.
///
/// Layout (little-endian): magic "RBDIGEST", version u32, algorithm u32
/// (1 = XXH3-128), cluster size u64, device size u64, cluster count u64,
/// XXH3-64 of the digest body u64, then the body.
public struct DigestFile: Equatable, Sendable {
    public static let magic = Array("RBDIGEST".utf8)
    public static let headerSize = 48
    public static let digestSize = 16

    public let clusterSize: Int
    public let deviceSize: UInt64
    /// `count × 16` bytes.
    public var body: [UInt8]

    public var count: Int { body.count / Self.digestSize }

    /// An empty record for a device; every cluster starts as "zero".
    public init(clusterSize: Int, deviceSize: UInt64) {
        self.clusterSize = clusterSize
        self.deviceSize = deviceSize
        let n = Int((deviceSize + UInt64(clusterSize) - 1) / UInt64(clusterSize))
        body = Array(repeating: 0, count: n * Self.digestSize)
    }

    /// The digest of `count` bytes; 16 zero bytes when they are all zero.
    public static func digest(of data: UnsafeRawPointer, count: Int, isZero: Bool) -> (UInt64, UInt64) {
        if isZero { return (0, 0) }
        let h = rb_xxh3_128(data, count)
        // A real digest of all-zero bytes is the zero marker's only collision;
        // nudge it so that "zero" stays unambiguous.
        return h.low64 == 0 && h.high64 == 0 ? (1, 0) : (h.low64, h.high64)
    }

    public mutating func set(cluster: Int, _ digest: (UInt64, UInt64)) {
        body.withUnsafeMutableBytes { p in
            p.storeBytes(of: digest.0.littleEndian, toByteOffset: cluster * 16, as: UInt64.self)
            p.storeBytes(of: digest.1.littleEndian, toByteOffset: cluster * 16 + 8, as: UInt64.self)
        }
    }

    public func digest(cluster: Int) -> (UInt64, UInt64) {
        body.withUnsafeBytes { p in
            (UInt64(littleEndian: p.loadUnaligned(fromByteOffset: cluster * 16, as: UInt64.self)),
             UInt64(littleEndian: p.loadUnaligned(fromByteOffset: cluster * 16 + 8, as: UInt64.self)))
        }
    }

    public func isZero(cluster: Int) -> Bool { digest(cluster: cluster) == (0, 0) }

    /// Bytes of cluster `i` that lie inside the device.
    public func clusterLength(_ i: Int) -> Int {
        Int(min(UInt64(clusterSize), deviceSize - UInt64(i) * UInt64(clusterSize)))
    }

    // MARK: file I/O

    public func encoded() -> [UInt8] {
        var out = Self.magic
        func le32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func le64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        le32(1); le32(1); le64(UInt64(clusterSize)); le64(deviceSize); le64(UInt64(count))
        le64(body.withUnsafeBytes { XXH3_64bits($0.baseAddress, $0.count) })
        return out + body
    }

    /// Writes the file atomically: a temporary file, fsync, rename, fsync of the directory.
    public func write(to path: String) throws {
        try AtomicFile.write(encoded(), to: path)
    }

    /// Reads and checks a digest file; errors name the path and what is wrong.
    public init(contentsOf path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw DigestFileError(path: path, reason: "cannot be read (missing or unreadable)")
        }
        let bytes = [UInt8](data)
        guard bytes.count >= Self.headerSize, Array(bytes[0..<8]) == Self.magic else {
            throw DigestFileError(path: path, reason: "is not a ringback digest file")
        }
        func le32(_ o: Int) -> UInt32 { bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) } }
        func le64(_ o: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) } }
        guard le32(8) == 1, le32(12) == 1 else {
            throw DigestFileError(path: path, reason: "has unsupported version \(le32(8)) or algorithm \(le32(12))")
        }
        let cluster = le64(16), size = le64(24), n = le64(32)
        guard cluster >= 512, cluster.nonzeroBitCount == 1, cluster <= 2 << 20,
              n == (size + cluster - 1) / cluster,
              UInt64(bytes.count) == UInt64(Self.headerSize) + n * UInt64(Self.digestSize) else {
            throw DigestFileError(path: path, reason: "is truncated or has an inconsistent header")
        }
        let body = Array(bytes[Self.headerSize...])
        guard body.withUnsafeBytes({ XXH3_64bits($0.baseAddress, $0.count) }) == le64(40) else {
            throw DigestFileError(path: path, reason: "is corrupt (its checksum does not match)")
        }
        clusterSize = Int(cluster)
        deviceSize = size
        self.body = body
    }

    /// The digest file that belongs to an image.
    public static func path(forImage image: String) -> String { image + ".digests" }

    /// One digest of the whole device content the file describes: XXH3-128 over
    /// the per-cluster digests, in hex. Two backups of the same bytes agree on it
    /// whatever their format or chain; the catalog records it per backup.
    public var contentDigest: String {
        let (hi, lo) = body.withUnsafeBytes { Self.digest(of: $0.baseAddress!, count: $0.count, isZero: false) }
        return String(format: "%016llx%016llx", hi, lo)
    }
}

/// A digest file that cannot be used.
public struct DigestFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let reason: String
    public var description: String { "digest file \(path) \(reason)" }
}

/// Whole-file replacement that never leaves a half-written file under the name.
public enum AtomicFile {
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let tmp = path + ".tmp-\(getpid())"
        let f = try BlockFile(path: tmp, mode: .create(truncate: true), direct: false)
        do {
            try bytes.withUnsafeBytes { try f.write(from: $0.baseAddress!, count: $0.count, at: 0) }
            try f.sync()
        } catch {
            unlink(tmp)
            throw error
        }
        try rename(tmp, to: path)
    }

    /// rename(2) followed by an fsync of the directory, so the new name is durable.
    public static func rename(_ from: String, to path: String) throws {
        guard Foundation.rename(from, path) == 0 else {
            let e = errno
            unlink(from)
            throw SystemError(errno: e, "rename \(from) to \(path)")
        }
        let dir = (path as NSString).deletingLastPathComponent
        let fd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY)
        if fd >= 0 { fsync(fd); close(fd) }
    }
}
