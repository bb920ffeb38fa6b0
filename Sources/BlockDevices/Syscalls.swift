#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import CBlkid
import CShim

/// The thin layer of system calls and libblkid calls used by BlockDevices.
/// Everything that touches the kernel goes through here; the probing policy in
/// `DeviceProbe` and `MountTable` only sees strings, numbers and `SystemError`.
enum Sys {
    /// Reads a whole file (a sysfs attribute, /proc/self/mountinfo).
    ///
    /// Reads until EOF rather than trusting st_size: procfs and sysfs report 0 or
    /// 4096 whatever the content is.
    static func readFile(_ path: String) throws(SystemError) -> String {
        let fd = try open(path)
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw SystemError(errno: errno, "read \(path)")
            }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func open(_ path: String) throws(SystemError) -> Int32 {
        while true {
            let fd = rb_open(path, O_RDONLY | rb_O_CLOEXEC, 0)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "open \(path) for reading")
        }
    }

    /// True when `path` exists (following symbolic links).
    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// The names in a directory, without "." and "..".
    static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        try Directory.names(path)
    }

    /// The canonical absolute path (symbolic links, "." and ".." resolved).
    static func realpath(_ path: String) throws(SystemError) -> String {
        guard let resolved = Glibc.realpath(path, nil) else {
            throw SystemError(errno: errno, "resolve \(path)")
        }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// What stat(2) says about a path, reduced to what probing needs.
    struct FileStatus: Sendable, Equatable {
        enum FileType: String, Sendable {
            case blockDevice = "a block device"
            case characterDevice = "a character device"
            case regularFile = "a regular file"
            case directory = "a directory"
            case fifo = "a FIFO"
            case socket = "a socket"
            case symbolicLink = "a symbolic link"
            case unknown = "of an unknown file type"
        }
        var type: FileType
        /// st_dev: the filesystem holding the path.
        var device: DeviceNumber
        /// st_rdev: the device a device node stands for.
        var representedDevice: DeviceNumber
    }

    /// stat(2), following symbolic links; `operation` phrases the error
    /// ("probe" gives "cannot probe /dev/sdz: No such file or directory (ENOENT)").
    static func status(_ path: String, operation: String) throws(SystemError) -> FileStatus {
        var st = Glibc.stat()
        if stat(path, &st) != 0 { throw SystemError(errno: errno, "\(operation) \(path)") }
        let type: FileStatus.FileType = switch st.st_mode & S_IFMT {
        case S_IFBLK: .blockDevice
        case S_IFCHR: .characterDevice
        case S_IFREG: .regularFile
        case S_IFDIR: .directory
        case S_IFIFO: .fifo
        case S_IFSOCK: .socket
        case S_IFLNK: .symbolicLink
        default: .unknown
        }
        return FileStatus(type: type, device: DeviceNumber(rawValue: UInt64(st.st_dev)),
                          representedDevice: DeviceNumber(rawValue: UInt64(st.st_rdev)))
    }

    /// True when the errno means "not there": the path or a directory on it is missing.
    static func isMissing(_ error: SystemError) -> Bool {
        error.errno == ENOENT || error.errno == ENOTDIR
    }

    /// The result of a superblock probe by libblkid.
    struct FilesystemTags: Sendable, Equatable {
        var type: String?
        var uuid: String?
        var label: String?
    }

    /// Probes the superblock of the device at `path` with libblkid (TYPE, UUID,
    /// LABEL). Returns nil when the device cannot be opened — an unattached loop
    /// device gives ENXIO, a non-root caller EACCES — or holds nothing blkid knows.
    ///
    /// `blkid_do_safeprobe` (not `blkid_do_probe`) so that a device carrying two
    /// conflicting signatures reports nothing instead of whichever came first
    /// (libblkid(3), "blkid_do_safeprobe").
    static func probeFilesystem(_ path: String) -> FilesystemTags? {
        guard let probe = blkid_new_probe_from_filename(path) else { return nil }
        defer { blkid_free_probe(probe) }
        guard blkid_probe_enable_superblocks(probe, 1) == 0,
              blkid_probe_set_superblocks_flags(
                  probe, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_LABEL) == 0,
              blkid_do_safeprobe(probe) == 0
        else { return nil }
        func value(_ name: String) -> String? {
            var data: UnsafePointer<CChar>?
            var length = 0
            guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
            return String(cString: data)
        }
        return FilesystemTags(type: value("TYPE"), uuid: value("UUID"), label: value("LABEL"))
    }
}
