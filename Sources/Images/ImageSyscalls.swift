#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import CShim

/// The system calls the Images module makes itself; everything else goes
/// through BlockIO's `BlockFile`.
enum ImageSys {
    // include/uapi/linux/fs.h: SEEK_DATA 3, SEEK_HOLE 4. Glibc hides them
    // behind _GNU_SOURCE, which Swift's Glibc module does not define.
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// lseek(2) with SEEK_DATA or SEEK_HOLE. Returns nil on ENXIO: no data
    /// (or, for SEEK_HOLE, nothing at all) at or after `offset`.
    static func seek(_ fd: Int32, _ offset: UInt64, whence: Int32, path: String) throws(SystemError) -> UInt64? {
        let r = lseek(fd, off_t(offset), whence)
        if r >= 0 { return UInt64(r) }
        if errno == ENXIO { return nil }
        let what = whence == seekData ? "data" : "a hole"
        throw SystemError(errno: errno, "find \(what) in \(path) after offset \(offset)")
    }

    /// Frees `length` bytes at `offset` of a regular file without changing
    /// its size (fallocate(2) FALLOC_FL_PUNCH_HOLE). Returns false where the
    /// filesystem cannot punch holes: the space then simply stays allocated.
    @discardableResult
    static func punchHole(_ fd: Int32, _ offset: UInt64, _ length: UInt64, path: String) throws(SystemError) -> Bool {
        while rb_punch_hole(fd, offset, length) != 0 {
            if errno == EINTR { continue }
            if errno == EOPNOTSUPP || errno == ENOSYS { return false }
            throw SystemError(errno: errno, "free \(length) bytes at offset \(offset) of \(path)")
        }
        return true
    }
}
