import Foundation

/// Changes a chosen share of a device's clusters: one 4 KiB write of fresh
/// random data at a random 4 KiB slot of each of `count` distinct clusters
/// picked at random, with O_DIRECT, then fsync.
enum DeviceDirtier {
    static let writeSize = 4096

    /// O_DIRECT, which Swift's Glibc module does not export (it is behind
    /// _GNU_SOURCE); the value differs between architectures.
    #if arch(x86_64) || arch(i386)
    static let oDirect: Int32 = 0o40000
    #elseif arch(arm64) || arch(arm)
    static let oDirect: Int32 = 0o200000
    #else
    #error("O_DIRECT is not known for this architecture")
    #endif

    /// Writes into `count` distinct random clusters of `clusterSize` bytes of
    /// `device` (of `size` bytes) and returns their indices, sorted.
    static func dirty(device: String, size: UInt64, clusterSize: Int, count: Int) throws -> [Int] {
        let clusters = Int(size / UInt64(clusterSize))
        precondition(count <= clusters && clusterSize % writeSize == 0)
        var random = SystemRandomNumberGenerator()
        var chosen = Set<Int>()
        while chosen.count < count { chosen.insert(Int.random(in: 0..<clusters, using: &random)) }
        let indices = chosen.sorted()

        let fd = open(device, O_WRONLY | oDirect | O_CLOEXEC)
        guard fd >= 0 else { throw BenchError("cannot open \(device) for O_DIRECT writes: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var raw: UnsafeMutableRawPointer?
        guard posix_memalign(&raw, writeSize, writeSize) == 0, let buffer = raw else {
            throw BenchError("cannot allocate an aligned buffer")
        }
        defer { free(buffer) }
        let words = buffer.bindMemory(to: UInt64.self, capacity: writeSize / 8)
        let slots = clusterSize / writeSize
        // In a shuffled order, so that the device sees random, not ascending, writes.
        for index in indices.shuffled(using: &random) {
            for i in 0..<(writeSize / 8) { words[i] = random.next() }
            let offset = Int64(index) * Int64(clusterSize) + Int64(Int.random(in: 0..<slots, using: &random) * writeSize)
            let written = pwrite(fd, buffer, writeSize, off_t(offset))
            guard written == writeSize else {
                throw BenchError("write of \(writeSize) bytes at \(offset) on \(device) failed: "
                                 + (written < 0 ? String(cString: strerror(errno)) : "short write (\(written))"))
            }
        }
        guard fsync(fd) == 0 else { throw BenchError("fsync of \(device) failed: \(String(cString: strerror(errno)))") }
        return indices
    }
}
