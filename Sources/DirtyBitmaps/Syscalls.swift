#if canImport(Glibc)
import Glibc
#endif
import BlockIO

/// The file system calls of this module: whole-file reads and atomic replacement.
/// Failures are `SystemError`s naming the operation and the path.
enum FileIO {
    /// Reads a whole regular file.
    static func read(_ path: String) throws -> [UInt8] {
        let f = try BlockFile(path: path, mode: .read, direct: false)
        guard f.kind == .regularFile else {
            throw SystemError(errno: EINVAL, "read \(path)", reason: "it is not a regular file")
        }
        var bytes = [UInt8](repeating: 0, count: Int(f.size))
        let n = try bytes.withUnsafeMutableBytes { p in
            p.count == 0 ? 0 : try f.read(into: p.baseAddress!, count: p.count, at: 0)
        }
        return Array(bytes[..<n])
    }

    /// Replaces `path` so that a crash at any moment leaves either the old file
    /// or the new one under the name, never a mix: write a temporary file in the
    /// same directory, fsync it, rename(2) it over the name, then fsync the
    /// directory so that the rename itself is durable (rename(2), fsync(2)).
    static func replace(_ path: String, with bytes: [UInt8]) throws {
        let tmp = path + ".tmp-\(getpid())"
        do {
            let f = try BlockFile(path: tmp, mode: .create(truncate: true), direct: false)
            try bytes.withUnsafeBytes { p in
                if p.count > 0 { try f.write(from: p.baseAddress!, count: p.count, at: 0) }
            }
            // The data must be stable before the rename makes it visible under the name.
            try f.sync()
        } catch {
            unlink(tmp)
            throw error
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError(errno: e, "rename \(tmp) to \(path)")
        }
        let dir = directory(of: path)
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemError(errno: errno, "open directory \(dir) to make the rename of \(path) durable") }
        defer { close(fd) }
        while fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "fsync directory \(dir) after renaming \(path)")
        }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
