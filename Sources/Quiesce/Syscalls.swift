import BlockIO
import CShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The kernel calls of quiescing, in one place: FIFREEZE and FITHAW on a
/// mount point (linux/fs.h; the ioctl goes to the superblock of the
/// filesystem the directory is on, see fs/ioctl.c ioctl_fsfreeze).
enum FreezeCalls {
    static func freeze(_ mountPoint: String) throws(SystemError) {
        try onDirectory(mountPoint, "freeze") { rb_ioctl_none($0, rb_FIFREEZE) }
    }

    /// EINVAL means the filesystem was not frozen (thawed already, e.g. by the
    /// watchdog or by hand): for a thaw that is success.
    static func thaw(_ mountPoint: String) throws(SystemError) {
        do { try onDirectory(mountPoint, "thaw") { rb_ioctl_none($0, rb_FITHAW) } } catch where error.errno == EINVAL {}
    }

    private static func onDirectory(_ path: String, _ what: String, _ call: (Int32) -> Int32) throws(SystemError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError(errno: errno, "open \(path) to \(what) its filesystem") }
        defer { close(fd) }
        while call(fd) != 0 {
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "\(what) the filesystem mounted at \(path)")
        }
    }
}
