#if canImport(Glibc)
import Glibc
#endif
import CShim

/// An operating-system failure: what was attempted, on what, and the errno.
///
/// Rendered for users as `cannot open /dev/sdb for reading: Permission denied (EACCES)`.
public struct SystemError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The errno value.
    public let errno: Int32
    /// What was attempted, phrased to follow "cannot", e.g. "open /dev/sdb for reading".
    public let operation: String

    /// A reason that says more than strerror would, when there is one.
    public let reason: String?

    public init(errno: Int32, _ operation: String, reason: String? = nil) {
        self.errno = errno
        self.operation = operation
        self.reason = reason
    }

    public var description: String {
        if let reason { return "cannot \(operation): \(reason)" }
        return "cannot \(operation): \(String(cString: strerror(errno))) (\(SystemError.name(of: errno)))"
    }

    /// The symbolic name of an errno value (EACCES, ENOENT, ...).
    public static func name(of code: Int32) -> String {
        switch code {
        case EPERM: "EPERM"
        case ENOENT: "ENOENT"
        case EIO: "EIO"
        case ENXIO: "ENXIO"
        case EBADF: "EBADF"
        case EAGAIN: "EAGAIN"
        case ENOMEM: "ENOMEM"
        case EACCES: "EACCES"
        case EBUSY: "EBUSY"
        case EEXIST: "EEXIST"
        case ENODEV: "ENODEV"
        case ENOTDIR: "ENOTDIR"
        case EISDIR: "EISDIR"
        case EINVAL: "EINVAL"
        case EFBIG: "EFBIG"
        case ENOSPC: "ENOSPC"
        case EROFS: "EROFS"
        case ENOTTY: "ENOTTY"
        case EINTR: "EINTR"
        case ENOSYS: "ENOSYS"
        case EOPNOTSUPP: "EOPNOTSUPP"
        case ECANCELED: "ECANCELED"
        case ETIMEDOUT: "ETIMEDOUT"
        case EADDRINUSE: "EADDRINUSE"
        case EADDRNOTAVAIL: "EADDRNOTAVAIL"
        default: "errno \(code)"
        }
    }
}

/// The thin layer of system calls used by BlockIO. Every call retries EINTR and
/// turns a failure into a `SystemError` naming the operation and the path.
enum Sys {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644, purpose: String) throws(SystemError) -> Int32 {
        while true {
            let fd = rb_open(path, flags | rb_O_CLOEXEC, UInt32(mode))
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "open \(path) \(purpose)")
        }
    }

    static func fstat(_ fd: Int32, path: String) throws(SystemError) -> Glibc.stat {
        var st = Glibc.stat()
        if Glibc.fstat(fd, &st) != 0 { throw SystemError(errno: errno, "stat \(path)") }
        return st
    }

    static func status(_ path: String) throws(SystemError) -> Glibc.stat {
        var st = Glibc.stat()
        if fstatat(AT_FDCWD, path, &st, 0) != 0 { throw SystemError(errno: errno, "stat \(path)") }
        return st
    }

    static func pread(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64, path: String) throws(SystemError) -> Int {
        while true {
            let n = Glibc.pread(fd, buf, count, off_t(offset))
            if n >= 0 { return n }
            if errno == EINTR || errno == EAGAIN { continue }
            throw SystemError(errno: errno, "read \(path) at offset \(offset)")
        }
    }

    static func pwrite(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int, _ offset: UInt64, path: String) throws(SystemError) -> Int {
        while true {
            let n = Glibc.pwrite(fd, buf, count, off_t(offset))
            if n >= 0 { return n }
            if errno == EINTR || errno == EAGAIN { continue }
            throw SystemError(errno: errno, "write \(path) at offset \(offset)")
        }
    }

    static func fsync(_ fd: Int32, path: String) throws(SystemError) {
        while Glibc.fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "fsync \(path)")
        }
    }

    static func ftruncate(_ fd: Int32, _ size: UInt64, path: String) throws(SystemError) {
        while Glibc.ftruncate(fd, off_t(size)) != 0 {
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "resize \(path) to \(size) bytes")
        }
    }

    static func ioctlU64(_ fd: Int32, _ req: UInt, name: String, path: String) throws(SystemError) -> UInt64 {
        var v: UInt64 = 0
        if rb_ioctl_u64(fd, req, &v) != 0 { throw SystemError(errno: errno, "query \(name) of \(path)") }
        return v
    }

    static func ioctlInt(_ fd: Int32, _ req: UInt, name: String, path: String) throws(SystemError) -> Int {
        var v: Int32 = 0
        if rb_ioctl_int(fd, req, &v) != 0 { throw SystemError(errno: errno, "query \(name) of \(path)") }
        return Int(v)
    }

    static func ioctlRange(_ fd: Int32, _ req: UInt, _ start: UInt64, _ length: UInt64, name: String, path: String) throws(SystemError) {
        if rb_ioctl_range(fd, req, start, length) != 0 {
            throw SystemError(errno: errno, "\(name) \(path) at offset \(start) length \(length)")
        }
    }
}

/// Directory listing shared by the modules that read sysfs and tracefs.
public enum Directory {
    /// The names in a directory, without "." and "..".
    public static func names(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError(errno: errno, "list \(path)") }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
