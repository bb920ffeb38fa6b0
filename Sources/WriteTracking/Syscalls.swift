#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import CShim

/// The thin layer of system calls used by WriteTracking. Every tracefs file,
/// directory, mount, poll and CPU-affinity call goes through here; the tracker
/// above only sees bytes, strings and `SystemError`.
enum Sys {
    /// open(2) with O_CLOEXEC, retrying EINTR.
    static func open(_ path: String, _ flags: Int32, purpose: String) throws(SystemError) -> Int32 {
        while true {
            let fd = rb_open(path, flags | rb_O_CLOEXEC, 0)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw SystemError(errno: errno, "open \(path) \(purpose)")
        }
    }

    /// Reads a whole small text file (a tracefs attribute, a `format` file).
    /// Reads until EOF: tracefs reports size 0 for every file.
    static func readFile(_ path: String) throws(SystemError) -> String {
        let fd = try open(path, O_RDONLY, purpose: "for reading")
        defer { Sys.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
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

    /// Writes `text` to a tracefs control file in one write(2): tracefs parses
    /// each write on its own, so a split write would be two commands.
    static func writeFile(_ path: String, _ text: String) throws(SystemError) {
        let fd = try open(path, O_WRONLY, purpose: "for writing")
        defer { Sys.close(fd) }
        try write(fd, text, path: path)
    }

    /// One write(2) of all of `text` on an open descriptor.
    static func write(_ fd: Int32, _ text: String, path: String) throws(SystemError) {
        var bytes = Array(text.utf8)
        while true {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n == bytes.count { return }
            if n < 0 && errno == EINTR { continue }
            if n >= 0 { throw SystemError(errno: EIO, "write \"\(text)\" to \(path)", reason: "short write of \(n) bytes") }
            throw SystemError(errno: errno, "write \"\(text.trimmingNewline)\" to \(path)")
        }
    }

    /// read(2) on a non-blocking descriptor: the byte count, or nil when
    /// nothing is there (EAGAIN).
    static func readNonBlocking(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws(SystemError) -> Int? {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            if errno == EAGAIN { return nil }
            throw SystemError(errno: errno, "read \(path)")
        }
    }

    static func close(_ fd: Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// mkdir(2); false when the directory already exists.
    static func makeDirectory(_ path: String) throws(SystemError) -> Bool {
        if mkdir(path, 0o755) == 0 { return true }
        if errno == EEXIST { return false }
        throw SystemError(errno: errno, "create \(path)")
    }

    static func removeDirectory(_ path: String) throws(SystemError) {
        if rmdir(path) != 0 { throw SystemError(errno: errno, "remove \(path)") }
    }

    /// The names in a directory, without "." and "..".
    static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        try Directory.names(path)
    }

    /// mount -t tracefs nodev `target`.
    static func mountTracefs(at target: String) throws(SystemError) {
        if mount("nodev", target, "tracefs", 0, nil) != 0 {
            throw SystemError(errno: errno, "mount tracefs on \(target)")
        }
    }

    /// flock(LOCK_EX | LOCK_NB); false when another descriptor holds it.
    static func tryLockExclusive(_ fd: Int32, path: String) throws(SystemError) -> Bool {
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            if errno == EWOULDBLOCK { return false }
            throw SystemError(errno: errno, "lock \(path)")
        }
        return true
    }

    /// A non-blocking pipe that wakes the reader thread out of poll(2):
    /// (read end, write end).
    static func wakePipe() throws(SystemError) -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) != 0 { throw SystemError(errno: errno, "create a pipe") }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        return (fds[0], fds[1])
    }

    /// Makes the read end of a wake pipe readable (a full pipe is awake enough).
    static func signal(wakePipe fd: Int32) {
        var byte: UInt8 = 1
        _ = Glibc.write(fd, &byte, 1)
    }

    /// Empties the read end of a wake pipe.
    static func clear(wakePipe fd: Int32) {
        var bytes = [UInt8](repeating: 0, count: 64)
        while bytes.withUnsafeMutableBytes({ Glibc.read(fd, $0.baseAddress, $0.count) }) > 0 {}
    }

    /// What poll(2) said about one descriptor.
    enum PollState: Equatable {
        case idle
        case readable
        /// POLLERR, POLLHUP or POLLNVAL: polling it again would return at once.
        case failed
    }

    /// poll(2) for input on `fds`. A timeout or EINTR returns all idle.
    static func poll(_ fds: [Int32], timeoutMilliseconds: Int32) throws(SystemError) -> [PollState] {
        var entries = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        let n = Glibc.poll(&entries, nfds_t(entries.count), timeoutMilliseconds)
        if n < 0 {
            if errno == EINTR { return Array(repeating: .idle, count: fds.count) }
            throw SystemError(errno: errno, "poll tracefs buffers")
        }
        return entries.map { entry in
            if entry.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { return .failed }
            return entry.revents & Int16(POLLIN) != 0 ? .readable : .idle
        }
    }

    /// A CPU mask as sched_setaffinity(2) takes it: 1024 bits, glibc's cpu_set_t.
    struct CPUMask: Equatable {
        var words = [UInt64](repeating: 0, count: 16)

        /// The mask holding `cpu` alone (the CPU_SET macro); nil past 1023.
        init?(only cpu: Int) {
            guard cpu >= 0 && cpu < words.count * 64 else { return nil }
            words[cpu / 64] = 1 << UInt64(cpu % 64)
        }

        init() {}
    }

    /// sched_getaffinity(2) and sched_setaffinity(2) are declared only under
    /// _GNU_SOURCE, which Swift's Glibc module does not define; they are looked
    /// up once in the C library and called with C's calling convention.
    private typealias AffinityCall = @convention(c) (pid_t, Int, UnsafeMutableRawPointer?) -> Int32
    private static let affinityCalls: (get: AffinityCall, set: AffinityCall)? = {
        let rtldDefault = UnsafeMutableRawPointer(bitPattern: 0)
        guard let get = dlsym(rtldDefault, "sched_getaffinity"), let set = dlsym(rtldDefault, "sched_setaffinity") else {
            return nil
        }
        return (unsafeBitCast(get, to: AffinityCall.self), unsafeBitCast(set, to: AffinityCall.self))
    }()

    /// The calling thread's CPU affinity mask.
    static func currentAffinity() throws(SystemError) -> CPUMask {
        guard let calls = affinityCalls else { throw SystemError(errno: ENOSYS, "find sched_getaffinity in the C library") }
        var mask = CPUMask()
        let rc = mask.words.withUnsafeMutableBytes { calls.get(0, $0.count, $0.baseAddress) }
        if rc != 0 { throw SystemError(errno: errno, "read the CPU affinity of the tracker thread") }
        return mask
    }

    /// Restricts the calling thread to `mask`. When it returns the thread runs
    /// on one of those CPUs (the kernel migrates it before returning).
    static func setAffinity(_ mask: CPUMask) throws(SystemError) {
        guard let calls = affinityCalls else { throw SystemError(errno: ENOSYS, "find sched_setaffinity in the C library") }
        var copy = mask
        let rc = copy.words.withUnsafeMutableBytes { calls.set(0, $0.count, $0.baseAddress) }
        if rc != 0 { throw SystemError(errno: errno, "set the CPU affinity of the tracker thread") }
    }

    static func sleep(milliseconds: Int) {
        usleep(useconds_t(milliseconds * 1000))
    }

    static var processID: Int32 { getpid() }

    /// The system's memory page size, the unit of ring-buffer pages before
    /// sub-buffer sizes became configurable (Linux 6.8).
    static var pageSize: Int { Int(sysconf(Int32(_SC_PAGESIZE))) }
}

extension String {
    /// The text without one trailing newline: tracefs attributes end in one.
    var trimmingNewline: String {
        var s = Substring(self)
        while s.last == "\n" { s.removeLast() }
        return String(s)
    }
}
