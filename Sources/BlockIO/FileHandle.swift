#if canImport(Glibc)
import Glibc
#endif
import CShim

/// What kind of object a path names.
public enum FileKind: Sendable, Equatable {
    case blockDevice
    case regularFile
}

/// An open block device or regular file, with what the copy engine needs to know
/// about it: size, the alignment O_DIRECT requires, and identity (dev/inode).
///
/// The descriptor is closed when the handle is released.
public final class BlockFile: @unchecked Sendable {
    /// The path it was opened by.
    public let path: String
    /// The file descriptor.
    public let fd: Int32
    /// Block device or regular file.
    public let kind: FileKind
    /// Whether the descriptor was opened with O_DIRECT.
    public let direct: Bool
    /// Size in bytes (BLKGETSIZE64 for devices, st_size for files).
    public private(set) var size: UInt64
    /// The logical block size: every O_DIRECT offset, length and buffer address
    /// is a multiple of it.
    public let logicalBlockSize: Int
    /// The physical block size (BLKPBSZGET) for devices; the logical size for files.
    public let physicalBlockSize: Int
    /// st_dev of the file (for files: the filesystem holding it).
    public let device: UInt64
    /// st_rdev for block devices (their own dev_t), 0 for files.
    public let rdev: UInt64
    /// st_ino.
    public let inode: UInt64

    /// How a file is opened.
    public enum Mode: Sendable {
        case read
        case write
        /// Create (or, with `truncate`, replace) a regular file for writing.
        case create(truncate: Bool)
    }

    /// Opens `path`. With `direct`, O_DIRECT is requested; a filesystem that
    /// refuses it (EINVAL) is opened buffered instead, and `direct` says which.
    public init(path: String, mode: Mode, direct: Bool = true) throws(SystemError) {
        self.path = path
        var flags: Int32
        let purpose: String
        switch mode {
        case .read: flags = O_RDONLY; purpose = "for reading"
        case .write: flags = O_RDWR; purpose = "for writing"
        case .create(let truncate):
            flags = O_RDWR | O_CREAT | (truncate ? O_TRUNC : O_EXCL); purpose = "for writing"
        }
        var fd: Int32
        var isDirect = direct
        do {
            fd = try Sys.open(path, flags | (direct ? rb_O_DIRECT : 0), purpose: purpose)
        } catch let e where e.errno == EINVAL && direct {
            fd = try Sys.open(path, flags, purpose: purpose)
            isDirect = false
        }
        let st: stat
        do { st = try Sys.fstat(fd, path: path) } catch { close(fd); throw error }
        let fmt = st.st_mode & S_IFMT
        self.fd = fd
        self.direct = isDirect
        self.device = UInt64(st.st_dev)
        self.rdev = UInt64(st.st_rdev)
        self.inode = UInt64(st.st_ino)
        if fmt == S_IFBLK {
            kind = .blockDevice
            do {
                size = try Sys.ioctlU64(fd, rb_BLKGETSIZE64, name: "size (BLKGETSIZE64)", path: path)
                logicalBlockSize = try Sys.ioctlInt(fd, rb_BLKSSZGET, name: "logical block size (BLKSSZGET)", path: path)
                physicalBlockSize = try Sys.ioctlInt(fd, rb_BLKPBSZGET, name: "physical block size (BLKPBSZGET)", path: path)
            } catch { close(fd); throw error }
        } else if fmt == S_IFREG {
            kind = .regularFile
            size = UInt64(st.st_size)
            // statx STATX_DIOALIGN would give the exact figure; 4096 is safe for
            // every filesystem and page-cache buffer we meet.
            logicalBlockSize = isDirect ? 4096 : 512
            physicalBlockSize = logicalBlockSize
        } else {
            close(fd)
            let what = switch fmt {
            case S_IFCHR: "a character device"
            case S_IFDIR: "a directory"
            case S_IFIFO: "a pipe"
            case S_IFSOCK: "a socket"
            default: "of another kind"
            }
            throw SystemError(errno: ENODEV, "use \(path)", reason: "it is \(what), not a block device or a regular file")
        }
    }

    deinit { close(fd) }

    /// Reads exactly `count` bytes at `offset` unless the end of the file comes
    /// first; returns the number read.
    public func read(into buf: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws(SystemError) -> Int {
        var done = 0
        while done < count {
            let n = try Sys.pread(fd, buf + done, count - done, offset + UInt64(done), path: path)
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all `count` bytes at `offset`.
    public func write(from buf: UnsafeRawPointer, count: Int, at offset: UInt64) throws(SystemError) {
        var done = 0
        while done < count {
            let n = try Sys.pwrite(fd, buf + done, count - done, offset + UInt64(done), path: path)
            if n == 0 { throw SystemError(errno: EIO, "write \(path) at offset \(offset + UInt64(done)) (no progress)") }
            done += n
        }
        if kind == .regularFile { size = max(size, offset + UInt64(count)) }
    }

    /// Flushes data and metadata to stable storage.
    public func sync() throws(SystemError) { try Sys.fsync(fd, path: path) }

    /// Sets the size of a regular file.
    public func truncate(to newSize: UInt64) throws(SystemError) {
        try Sys.ftruncate(fd, newSize, path: path)
        size = newSize
    }

    /// Zeroes a range of a block device (BLKZEROOUT).
    public func zeroOut(at offset: UInt64, length: UInt64) throws(SystemError) {
        try Sys.ioctlRange(fd, rb_BLKZEROOUT, offset, length, name: "zero", path: path)
    }

    /// Re-reads the size (after the file grew through another path).
    public func refreshSize() throws(SystemError) {
        if kind == .regularFile { size = UInt64(try Sys.fstat(fd, path: path).st_size) }
    }
}

/// A buffer aligned for O_DIRECT, released when the object goes away.
public final class AlignedBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int
    public let alignment: Int

    /// With `zeroed` false the memory is left as the allocator returns it: for
    /// I/O buffers that are always filled before use (and pinned by io_uring
    /// registration, which faults them in anyway), skipping the memset saves
    /// touching every page twice.
    public init(count: Int, alignment: Int = 4096, zeroed: Bool = true) {
        precondition(count > 0 && alignment.nonzeroBitCount == 1)
        var p: UnsafeMutableRawPointer?
        let rc = posix_memalign(&p, alignment, count)
        precondition(rc == 0 && p != nil, "out of memory allocating \(count) bytes")
        pointer = p!
        self.count = count
        self.alignment = alignment
        if zeroed { memset(pointer, 0, count) }
    }

    deinit { free(pointer) }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: count) }
}
