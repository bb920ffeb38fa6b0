import Foundation

/// Helpers for tests that run against the real kernel: processes, temporary
/// directories and loop devices, each torn down even when a test fails.
public enum Shell {
    /// The outcome of a finished process.
    public struct Result: Sendable {
        public let status: Int32
        public let stdout: String
        public let stderr: String
        public var succeeded: Bool { status == 0 }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let command: [String]
        public let result: Result
        public var description: String {
            "\(command.joined(separator: " ")) exited \(result.status): \(result.stderr)\(result.stdout)"
        }
    }

    /// Runs a program (looked up in PATH) and captures its output.
    @discardableResult
    public static func run(_ args: [String], stdin: String? = nil, environment: [String: String]? = nil) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        if let environment {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        let inPipe = Pipe()
        p.standardInput = inPipe
        try p.run()
        if let stdin { inPipe.fileHandleForWriting.write(Data(stdin.utf8)) }
        try? inPipe.fileHandleForWriting.close()
        // Read both pipes concurrently so that neither fills up and blocks the child.
        let group = DispatchGroup()
        nonisolated(unsafe) var errData = Data()
        group.enter()
        DispatchQueue.global().async {
            errData = err.fileHandleForReading.readDataToEndOfFile()
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        p.waitUntilExit()
        return Result(status: p.terminationStatus,
                      stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Runs a program and throws unless it exits 0; returns its stdout.
    @discardableResult
    public static func check(_ args: [String], stdin: String? = nil) throws -> String {
        let r = try run(args, stdin: stdin)
        guard r.succeeded else { throw Failure(command: args, result: r) }
        return r.stdout
    }

    /// True when `program` is on PATH.
    public static func has(_ program: String) -> Bool {
        (try? run(["sh", "-c", "command -v \(program)"]).succeeded) ?? false
    }
}

/// Facts about the machine that decide whether kernel-facing tests can run.
public enum TestEnvironment {
    public static var isRoot: Bool { geteuid() == 0 }
    public static var hasLoopDevices: Bool { FileManager.default.fileExists(atPath: "/dev/loop-control") }
    /// Set by scripts/test.sh under CI as root: a missing facility must fail the
    /// tests that need it, not skip them.
    public static var rootTestsRequired: Bool { ProcessInfo.processInfo.environment["RINGBACK_REQUIRE_ROOT_TESTS"] == "1" }
    /// Root and loop devices: what the real-device tests need (or a CI run that
    /// demands them, so that their absence fails loudly).
    public static var canUseLoopDevices: Bool { (isRoot && hasLoopDevices) || rootTestsRequired }
    public static let loopSkipReason = "needs root and /dev/loop-control (real loop devices)"
}

/// A temporary directory removed on `remove()` or when released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(prefix: String = "ringback-test", under base: String = NSTemporaryDirectory()) throws {
        let template = (base as NSString).appendingPathComponent("\(prefix).XXXXXX")
        var bytes = Array(template.utf8CString)
        guard let p = mkdtemp(&bytes) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: template])
        }
        path = String(cString: p)
    }

    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }

    deinit { remove() }
}

/// A loop device over a sparse backing file, detached when released (or by
/// `detach()`), so that a failing test leaves nothing attached.
public final class LoopDevice: @unchecked Sendable {
    /// /dev/loopN
    public let path: String
    /// The backing file.
    public let backingFile: String
    private var attached = true

    /// Creates a backing file of `size` bytes in `directory` and attaches it.
    /// `sectorSize` sets the logical block size (512 or 4096); `directIO` turns
    /// on the loop driver's direct I/O to the backing file.
    public init(size: UInt64, in directory: String, name: String = "disk.img",
                sectorSize: Int = 512, directIO: Bool = false, fill: Fill = .none) throws {
        backingFile = (directory as NSString).appendingPathComponent(name)
        try Shell.check(["truncate", "-s", String(size), backingFile])
        try fill.apply(to: backingFile, size: size)
        path = try Self.attach(backingFile, sectorSize: sectorSize, directIO: directIO)
    }

    /// Attaches `file` to a free loop device and returns its path (/dev/loopN).
    static func attach(_ file: String, sectorSize: Int, directIO: Bool) throws -> String {
        var args = ["losetup", "-f", "--show", "--sector-size", String(sectorSize)]
        if directIO { args += ["--direct-io=on"] }
        args.append(file)
        // losetup -f races with other tests attaching at the same moment; retry.
        var last: Error?
        for _ in 0..<5 {
            do {
                return try Shell.check(args).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch { last = error; usleep(100_000) }
        }
        throw last!
    }

    /// Content written into the backing file before it is attached.
    public enum Fill: Sendable {
        case none
        /// Random bytes over the whole size.
        case random
        /// Random bytes with every other `run`-sized stretch left zero.
        case randomWithZeroRuns(run: UInt64)

        func apply(to file: String, size: UInt64) throws {
            let regions: [(UInt64, UInt64)]
            switch self {
            case .none: return
            case .random: regions = [(0, size)]
            case .randomWithZeroRuns(let run):
                regions = stride(from: UInt64(0), to: size, by: Int(2 * run)).map { ($0, min(run, size - $0)) }
            }
            try writeRandom(regions: regions, to: file)
        }
    }

    /// Writes bytes from /dev/urandom over each (offset, length) region of a file.
    public static func writeRandom(regions: [(UInt64, UInt64)], to file: String) throws {
        guard let out = FileHandle(forWritingAtPath: file), let rnd = FileHandle(forReadingAtPath: "/dev/urandom") else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: file])
        }
        defer { try? out.synchronize(); try? out.close(); try? rnd.close() }
        for (offset, length) in regions {
            try out.seek(toOffset: offset)
            var left = length
            while left > 0 {
                let n = Int(min(left, 4 << 20))
                out.write(rnd.readData(ofLength: n))
                left -= UInt64(n)
            }
        }
    }

    /// Writes `data` at `offset` through the device (O_DIRECT when aligned).
    public func write(_ data: [UInt8], at offset: UInt64) throws {
        let fd = open(path, O_WRONLY)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
        defer { close(fd) }
        let n = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard n == data.count else { throw POSIXError(.EIO) }
        fsync(fd)
    }

    public func detach() {
        guard attached else { return }
        attached = false
        Self.detach(path)
        try? FileManager.default.removeItem(atPath: backingFile)
    }

    /// `losetup -d`, retried for a second: udev or a closing reader may still
    /// hold the device for a moment.
    static func detach(_ path: String) {
        for _ in 0..<10 {
            if (try? Shell.run(["losetup", "-d", path]).succeeded) == true { return }
            usleep(100_000)
        }
    }

    deinit { detach() }
}

/// The `ringback` executable built next to the tests.
public enum RingbackBinary {
    /// $RINGBACK_BIN, else `ringback` beside the test bundle, else the package's .build/debug.
    public static var path: String {
        if let p = ProcessInfo.processInfo.environment["RINGBACK_BIN"] { return p }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("ringback").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/ringback").path
    }

    /// Runs `ringback ARGS...`.
    @discardableResult
    public static func run(_ args: [String], environment: [String: String]? = nil) throws -> Shell.Result {
        try Shell.run([path] + args, environment: environment)
    }
}

/// The oracles: qemu-img check/compare.
public enum QemuImg {
    /// `qemu-img check` output; throws when it reports errors or leaks.
    @discardableResult
    public static func check(_ image: String) throws -> String {
        try Shell.check(["qemu-img", "check", image])
    }

    /// True when `qemu-img compare` says the two are identical (exit 0).
    public static func identical(_ a: String, _ b: String, formatA: String? = nil, formatB: String? = nil) throws -> Bool {
        var args = ["qemu-img", "compare"]
        if let formatA { args += ["-f", formatA] }
        if let formatB { args += ["-F", formatB] }
        let r = try Shell.run(args + [a, b])
        if r.status > 1 { throw Shell.Failure(command: args + [a, b], result: r) }
        return r.status == 0
    }
}

/// A ringbackd process of a test: its own socket and state folder, stopped
/// (SIGTERM, then SIGKILL) when released, and the tracefs instances of the
/// disks it tracked removed, so a failing test leaves nothing running.
public final class DaemonProcess: @unchecked Sendable {
    public let socket: String
    public let stateDir: String
    public let bootIDFile: String?
    public let extraArguments: [String]
    /// Variables added to the daemon's environment (e.g. NOTIFY_SOCKET).
    public let environment: [String: String]
    private var process: Process?
    public private(set) var logPath: String

    /// Starts ringbackd and waits until its socket answers.
    /// Held so that the folder (with tracked.json, which says which tracefs
    /// instances are this daemon's) outlives the daemon's clean-up.
    private let directory: TemporaryDirectory

    /// Whether ringbackd reads the default /etc/ringback/ringback.toml (only
    /// for a test of that default); otherwise an empty config of its own.
    public let readsHostConfig: Bool

    public init(in dir: TemporaryDirectory, stateDir: String? = nil, bootIDFile: String? = nil,
                extraArguments: [String] = [], environment: [String: String] = [:], readsHostConfig: Bool = false) throws {
        self.readsHostConfig = readsHostConfig
        directory = dir
        socket = dir.file("qmp.sock")
        self.stateDir = stateDir ?? dir.file("state")
        self.bootIDFile = bootIDFile
        self.extraArguments = extraArguments
        self.environment = environment
        logPath = dir.file("ringbackd.log")
        try start()
    }

    /// The ringbackd executable beside ringback.
    public static var binary: String {
        (RingbackBinary.path as NSString).deletingLastPathComponent + "/ringbackd"
    }

    public func start() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        var args = ["--socket", socket, "--state-dir", stateDir]
        // A test's daemon never reads the host's /etc/ringback/ringback.toml
        // (an installed package's plans would run in it): an empty one of its own.
        if !extraArguments.contains("--config") && !readsHostConfig {
            let empty = directory.file("ringback-empty.toml")
            if !FileManager.default.fileExists(atPath: empty) { _ = FileManager.default.createFile(atPath: empty, contents: Data()) }
            args += ["--config", empty]
        }
        if let bootIDFile { args += ["--boot-id-file", bootIDFile] }
        p.arguments = args + extraArguments
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let output = FileHandle(forWritingAtPath: logPath)!
        _ = output.seekToEndOfFile()
        p.standardOutput = output
        p.standardError = output
        try p.run()
        process = p
        for _ in 0..<200 {
            if !p.isRunning { throw Shell.Failure(command: [Self.binary] + args, result: .init(status: p.terminationStatus, stdout: "", stderr: log())) }
            if FileManager.default.fileExists(atPath: socket), Self.accepts(socket) { return }
            usleep(50_000)
        }
        throw Shell.Failure(command: [Self.binary] + args, result: .init(status: -1, stdout: "", stderr: "socket never answered"))
    }

    /// Whether a connection to the Unix socket at `path` succeeds (and closes
    /// it at once). In-process rather than through a python3 one-liner: in the
    /// LVM VM, starting python costs seconds per poll.
    static func accepts(_ path: String) -> Bool {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        } == 0
    }

    /// The running daemon's process id (nil once stopped), for /proc/PID.
    public var pid: Int32? {
        guard let p = process, p.isRunning else { return nil }
        return p.processIdentifier
    }

    public func log() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    /// SIGTERM and wait: a clean stop.
    public func stop() {
        guard let p = process, p.isRunning else { return }
        p.terminate()
        p.waitUntilExit()
        process = nil
    }

    /// SIGKILL: a crash.
    public func kill() {
        guard let p = process, p.isRunning else { return }
        Foundation.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        process = nil
    }

    /// Runs `ringback ARGS --socket S`.
    @discardableResult
    public func ringback(_ args: [String]) throws -> Shell.Result {
        try RingbackBinary.run(args, environment: ["RINGBACK_SOCKET": socket])
    }

    /// Removes the tracefs instance of a test's own disk: a daemon that died
    /// before it saved its list of tracked devices leaves it behind.
    public static func removeTracefsInstance(of device: String) {
        rmdir("/sys/kernel/tracing/instances/ringback-" + (device as NSString).lastPathComponent)
    }

    deinit {
        kill()
        // The instances a killed daemon leaves behind record until removed.
        let dir = "/sys/kernel/tracing/instances"
        if let names = try? FileManager.default.contentsOfDirectory(atPath: dir) {
            // The devices it tracked, exactly: loop1 must not match loop10 of another test.
            let data = FileManager.default.contents(atPath: stateDir + "/tracked.json") ?? Data()
            let nodes = ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])?["nodes"] as? [String] ?? []
            let disks = Set(nodes.map { node -> String in
                // A partition's instance is its disk's: loop3p1 → loop3.
                var name = (node as NSString).lastPathComponent
                if let p = name.range(of: #"(?<=[0-9])p[0-9]+$"#, options: .regularExpression) {
                    name.removeSubrange(p)
                }
                return name
            })
            for name in names where name.hasPrefix("ringback-") {
                if disks.contains(String(name.dropFirst("ringback-".count))) { rmdir(dir + "/" + name) }
            }
        }
    }
}

/// The write sets of QEMU's incremental-backup test (iotests 124) on a 64 MiB
/// device with 512-byte sectors, shared by the chain tests.
public enum QemuIncrementalScenario {
    public typealias Write = (pattern: UInt8, offset: UInt64, length: Int)
    public static let prefill: [Write] = [(0x41, 0, 512), (0xd5, 1 << 20, 32 << 10), (0xdc, 32 << 20, 124 << 10)]
    public static let setA: [Write] = [(0xab, 0, 512), (0xfe, 16 << 20, 256 << 10), (0x64, 32_736 << 10, 64 << 10)]
    public static let setB: [Write] = [(0x9a, 0, 512), (0x55, 8 << 20, 352 << 10), (0x78, 15_872 << 10, 1 << 20)]

    public static func apply(_ writes: [Write], to device: LoopDevice) throws {
        for w in writes { try device.write([UInt8](repeating: w.pattern, count: w.length), at: w.offset) }
    }
}
