import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A loop device whose reads (and, if asked, writes) of chosen byte ranges
/// fail with a real EIO from the kernel, for tests of read-error policies.
///
/// The device is attached over `disk.img` of a faultfs mount
/// (Tests/tools/faultfs.py), which passes I/O through to a backing file and
/// answers requests that overlap a fault with EIO. The loop driver turns that
/// into a failed request, and the kernel logs it (`I/O error, dev loopN,
/// sector S op 0x0:(READ)`) as it would for a failing disk.
///
/// ```swift
/// let device = try FaultyLoopDevice(size: 8 << 20, fill: .random)
/// defer { device.detach() }
/// try device.failReads(offset: 1 << 20, length: 64 << 10, mode: .once)
/// // ... read device.path: the first read of that range fails with EIO ...
/// #expect(try device.injectedFailures.reads == 1)
/// ```
///
/// Keep the object alive while `path` is in use (a `defer { detach() }` does):
/// Swift may release an object after its last use, and releasing it detaches
/// the device. Teardown runs in order — `losetup -d`, unmount, stop the
/// faultfs process, remove the temporary folder — from `detach()` or when the
/// object is released, so a failing test leaves nothing behind.
public final class FaultyLoopDevice: @unchecked Sendable {
    /// How a fault behaves; `off` removes it.
    public enum Mode: String, Sendable {
        /// Every overlapping request fails.
        case always
        /// The first overlapping request fails; then the fault is gone.
        case once
        case off
    }

    /// How many requests faultfs has answered with EIO since it started.
    public struct InjectedFailures: Equatable, Sendable {
        public var reads: Int
        public var writes: Int
        public var total: Int { reads + writes }

        public init(reads: Int, writes: Int) {
            self.reads = reads
            self.writes = writes
        }
    }

    /// /dev/loopN
    public let path: String
    /// Size of the device in bytes.
    public let size: UInt64
    /// The file on disk behind the device: reading it directly gives the
    /// expected content of any range, faulty or not.
    public var backingFile: String { filesystem.backingFile }
    /// Where faultfs is mounted.
    public var mountPoint: String { filesystem.mountPoint }

    private let filesystem: FaultFS
    private var attached = true

    /// Creates a backing file of `size` bytes (filled as `fill` says), mounts
    /// faultfs over it and attaches a loop device to the mounted image.
    /// `directIO` turns on the loop driver's direct I/O, which works over
    /// FUSE: the device keeps no second copy of the image in the page cache.
    public init(size: UInt64, sectorSize: Int = 512, directIO: Bool = true,
                fill: LoopDevice.Fill = .none) throws {
        // Should attaching fail, `filesystem` is released on the way out and
        // unmounts itself.
        let filesystem = try FaultFS(size: size, fill: fill)
        path = try LoopDevice.attach(filesystem.image, sectorSize: sectorSize, directIO: directIO)
        self.filesystem = filesystem
        self.size = size
    }

    /// Fails reads that overlap `length` bytes at `offset`, as `mode` says.
    ///
    /// The device's page cache is dropped too, so that a buffered reader does
    /// not get the range from a copy cached before the fault was set. Note that
    /// a buffered reader retries a failed readahead page by page, so it may use
    /// up a `once` fault and still succeed; read with O_DIRECT to see it.
    public func failReads(offset: UInt64, length: UInt64, mode: Mode = .always) throws {
        try filesystem.send("read \(offset) \(length) \(mode.rawValue)")
        try Shell.check(["blockdev", "--flushbufs", path])
    }

    /// Fails writes that overlap `length` bytes at `offset`, as `mode` says.
    public func failWrites(offset: UInt64, length: UInt64, mode: Mode = .always) throws {
        try filesystem.send("write \(offset) \(length) \(mode.rawValue)")
    }

    /// Removes every fault; the counts of injected failures are kept.
    public func clearFaults() throws {
        try filesystem.send("clear")
    }

    /// The failures faultfs has injected so far, as it counts them.
    public var injectedFailures: InjectedFailures {
        get throws {
            var counts = InjectedFailures(reads: 0, writes: 0)
            for line in try filesystem.state().split(separator: "\n") {
                let words = line.split(separator: " ")
                guard words.count == 2, let n = Int(words[1]) else { continue }
                if words[0] == "read-failures" { counts.reads = n }
                if words[0] == "write-failures" { counts.writes = n }
            }
            return counts
        }
    }

    /// Writes `length` random bytes at `offset` through the device and fsyncs;
    /// returns the bytes written.
    @discardableResult
    public func writeRandom(offset: UInt64, length: Int) throws -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<length).map { _ in UInt8.random(in: .min ... .max, using: &rng) }
        try write(bytes, at: offset)
        return bytes
    }

    /// Writes `data` at `offset` through the device's page cache, then fsyncs.
    /// A write fault in the range surfaces as EIO from the fsync; a read fault
    /// can too, where a partial page must be read before it is written.
    public func write(_ data: [UInt8], at offset: UInt64) throws {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw FaultFSError(operation: "open \(path) for writing", errno: errno) }
        defer { close(fd) }
        var done = 0
        while done < data.count {
            let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, $0.count - done, off_t(offset) + off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw FaultFSError(operation: "write \(data.count) bytes to \(path) at offset \(offset)",
                                   errno: n < 0 ? errno : EIO)
            }
            done += n
        }
        guard fsync(fd) == 0 else {
            throw FaultFSError(operation: "fsync \(path) after writing at offset \(offset)", errno: errno)
        }
    }

    /// Detaches the loop device, unmounts faultfs, stops it and removes the
    /// temporary folder. Safe to call more than once.
    public func detach() {
        guard attached else { return }
        attached = false
        // Detach first: while the loop device holds disk.img open, the mount is
        // busy and a clean unmount fails.
        LoopDevice.detach(path)
        filesystem.stop()
    }

    deinit { detach() }
}

/// Why faultfs or I/O through it failed: what was attempted and why.
public struct FaultFSError: Error, CustomStringConvertible, Sendable {
    /// What was attempted, phrased to follow "cannot".
    public let operation: String
    /// The errno of a failed system call, 0 for other failures.
    public let errno: Int32
    /// More than strerror would say, when there is more.
    public let reason: String?

    public init(operation: String, errno: Int32 = 0, reason: String? = nil) {
        self.operation = operation
        self.errno = errno
        self.reason = reason
    }

    public var description: String {
        if let reason { return "cannot \(operation): \(reason)" }
        return "cannot \(operation): \(String(cString: strerror(errno)))"
    }
}

/// A running faultfs (Tests/tools/faultfs.py) and its temporary folder, which
/// holds the backing file, the mount point and the process's log.
final class FaultFS {
    let folder: String
    let backingFile: String
    let mountPoint: String
    let logFile: String
    /// The image that faultfs serves.
    var image: String { mountPoint + "/disk.img" }
    /// Where faults are set and counts read (see the script's header).
    var control: String { mountPoint + "/control" }

    private var process: Process?
    private var readiness: FileHandle?
    private var stopped = false

    /// The script, found from this source file as other test support finds
    /// the package's files: Sources/TestSupport/ → package root.
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Tests/tools/faultfs.py").path
    }

    init(size: UInt64, fill: LoopDevice.Fill) throws {
        let template = (NSTemporaryDirectory() as NSString).appendingPathComponent("ringback-faultfs.XXXXXX")
        var bytes = Array(template.utf8CString)
        guard let made = mkdtemp(&bytes) else {
            throw FaultFSError(operation: "create a temporary folder like \(template)", errno: errno)
        }
        folder = String(cString: made)
        backingFile = folder + "/backing.img"
        mountPoint = folder + "/mnt"
        logFile = folder + "/faultfs.log"
        do { try start(size: size, fill: fill) } catch { stop(); throw error }
    }

    private func start(size: UInt64, fill: LoopDevice.Fill) throws {
        let script = Self.script
        guard FileManager.default.isExecutableFile(atPath: script) else {
            throw FaultFSError(operation: "start faultfs", reason: "\(script) is missing or not executable")
        }
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else {
            throw FaultFSError(operation: "start faultfs", reason: "/dev/fuse is missing (modprobe fuse; scripts/setup.sh installs fuse3)")
        }
        try Shell.check(["truncate", "-s", String(size), backingFile])
        try fill.apply(to: backingFile, size: size)
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: false)
        guard FileManager.default.createFile(atPath: logFile, contents: nil),
              let log = FileHandle(forWritingAtPath: logFile) else {
            throw FaultFSError(operation: "create \(logFile)", errno: errno)
        }
        defer { try? log.close() }

        let p = Process()
        p.executableURL = URL(fileURLWithPath: script)
        p.arguments = [backingFile, mountPoint]
        let stdout = Pipe()
        p.standardOutput = stdout
        p.standardError = log
        p.standardInput = FileHandle.nullDevice
        try p.run()
        process = p
        readiness = stdout.fileHandleForReading
        guard Self.awaitReady(stdout.fileHandleForReading.fileDescriptor, seconds: 30) else {
            throw FaultFSError(operation: "mount faultfs on \(mountPoint)",
                               reason: "it did not report ready; its log says: \(self.log())")
        }
    }

    /// Waits for the `ready` line that faultfs prints once the kernel has sent
    /// FUSE_INIT, or for the end of its output (it exited), or a deadline.
    private static func awaitReady(_ fd: Int32, seconds: Int) -> Bool {
        var text = ""
        var idle = 0
        while !text.contains("ready\n") {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, 1000)
            if r < 0 && errno == EINTR { continue }
            if r < 0 { return false }
            if r == 0 {
                idle += 1
                if idle >= seconds { return false }
                continue
            }
            var buf = [UInt8](repeating: 0, count: 256)
            let n = read(fd, &buf, buf.count)
            if n <= 0 { return false }
            text += String(decoding: buf[..<n], as: UTF8.self)
        }
        return true
    }

    func log() -> String {
        (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
    }

    /// Writes one command to the control file; faultfs has applied it when
    /// write(2) returns, and refuses a malformed one with EINVAL.
    func send(_ command: String) throws {
        let fd = open(control, O_WRONLY)
        guard fd >= 0 else { throw FaultFSError(operation: "open \(control)", errno: errno) }
        defer { close(fd) }
        let line = Array((command + "\n").utf8)
        let n = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard n == line.count else {
            throw FaultFSError(operation: "send '\(command)' to \(control)", errno: n < 0 ? errno : EIO)
        }
    }

    /// The control file's text: counts and faults.
    func state() throws -> String {
        guard let handle = FileHandle(forReadingAtPath: control) else {
            throw FaultFSError(operation: "open \(control) for reading", errno: errno)
        }
        defer { try? handle.close() }
        return String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
    }

    /// Whether the mount point is listed in /proc/self/mounts.
    var isMounted: Bool {
        guard let mounts = FileHandle(forReadingAtPath: "/proc/self/mounts") else { return false }
        defer { try? mounts.close() }
        let text = String(decoding: mounts.readDataToEndOfFile(), as: UTF8.self)
        return text.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first == Substring(mountPoint) }
    }

    /// Unmounts, stops the process and removes the folder; safe to call twice.
    /// A mount still busy (the loop device open elsewhere) is detached lazily
    /// and the process stopped by SIGTERM, which aborts the FUSE connection.
    func stop() {
        guard !stopped else { return }
        stopped = true
        var clean = true
        if isMounted {
            let fusermount = Shell.has("fusermount3") ? "fusermount3" : "fusermount"
            clean = (try? Shell.run([fusermount, "-u", mountPoint]).succeeded) == true
            if !clean { _ = try? Shell.run(["umount", "-l", mountPoint]) }
        }
        if let p = process {
            // After a clean unmount faultfs exits by itself; give it a while.
            if clean { Self.waitForExit(p, seconds: 10) }
            if p.isRunning {
                p.terminate()
                Self.waitForExit(p, seconds: 10)
            }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
            process = nil
        }
        try? readiness?.close()
        readiness = nil
        // Never remove files through a mount that is still there.
        if !isMounted { try? FileManager.default.removeItem(atPath: folder) }
    }

    private static func waitForExit(_ p: Process, seconds: Int) {
        for _ in 0..<(seconds * 50) where p.isRunning { usleep(20_000) }
    }

    deinit { stop() }
}
