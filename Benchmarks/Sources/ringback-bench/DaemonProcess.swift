import Foundation
import Synchronization

/// A private `ringbackd` for the tracking suite: its own socket and state
/// folder, driven through the `ringback` CLI as an operator would. It keeps
/// count of the bitmaps and devices it was given, so that `stop` can undo
/// them however the benchmark ends; whatever the daemon could not undo (its
/// tracefs instances after a kill) is removed by hand.
final class DaemonProcess: Sendable {
    let binary: String
    let ringback: String
    let socket: String
    let stateDirectory: String
    let logPath: String

    private struct State {
        var process: Process?
        /// (device, bitmap name) pairs added and not yet removed.
        var bitmaps: [(device: String, name: String)] = []
        /// Devices tracked and not yet untracked.
        var tracked: [String] = []
        /// Kernel names (loop5) of every disk ever tracked: their tracefs
        /// instances must be gone at the end.
        var disks: Set<String> = []
        var stopped = false
    }
    private let state = Mutex(State())

    /// The tracefs instance of a disk (DESIGN §7).
    static func instancePath(disk: String) -> String { "/sys/kernel/tracing/instances/ringback-\(disk)" }

    init(binary: String, ringback: String, folder: String) {
        self.binary = binary
        self.ringback = ringback
        socket = folder + "/qmp.sock"
        stateDirectory = folder + "/state"
        logPath = folder + "/ringbackd.log"
    }

    var pid: Int32? { state.withLock { $0.process?.processIdentifier } }

    /// Starts the daemon and waits until its socket answers.
    func start() throws { try startWith([]) }

    /// `start`, with more ringbackd options.
    func startWith(_ extra: [String]) throws {
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let log = FileHandle(forWritingAtPath: logPath) else { throw BenchError("cannot write \(logPath)") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--socket", socket, "--state-dir", stateDirectory] + extra
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = log
        process.standardError = log
        // Foundation starts the child in a process group of its own, so a
        // Ctrl-C on the terminal reaches the benchmark, which stops it in order.
        try state.withLock { s in
            guard !s.stopped else { throw BenchError("stopping") }
            try process.run()
            s.process = process
        }
        for _ in 0..<150 {
            if !process.isRunning {
                throw BenchError("ringbackd exited at once (status \(process.terminationStatus)): \(logTail())")
            }
            if (try? Child.run([ringback, "qmp", "query-version", "--socket", socket]))?.succeeded == true { return }
            usleep(100_000)
        }
        throw BenchError("ringbackd did not answer on \(socket) within 15 s: \(logTail())")
    }

    func logTail() -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(5).joined(separator: " | ")
    }

    /// CPU seconds (user + system) the daemon has used so far.
    func cpuSeconds() -> Double? {
        guard let pid, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // After "pid (comm)": state is field 3, utime 14, stime 15.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    // MARK: the CLI

    /// Runs `ringback ARGS --socket S` and returns its result, throwing on
    /// a non-zero exit.
    @discardableResult
    func cli(_ args: [String], cleanUp: Bool = false) throws -> ChildResult {
        try Child.check([ringback] + args + ["--socket", socket], cleanUp: cleanUp)
    }

    /// `ringback bitmap add DEVICE NAME --granularity G`: starts tracking the
    /// device if it is not tracked yet.
    func addBitmap(device: String, name: String, granularity: Int) throws {
        state.withLock { s in
            // Counted before the command: if it is interrupted half-way, the
            // clean-up still tries to remove what may exist.
            s.bitmaps.append((device, name))
            if !s.tracked.contains(device) { s.tracked.append(device) }
            s.disks.insert((device as NSString).lastPathComponent)
        }
        try cli(["bitmap", "add", device, name, "--granularity", "\(granularity)"])
    }

    /// `ringback bitmap remove DEVICE NAME`.
    func removeBitmap(device: String, name: String, cleanUp: Bool = false) throws {
        try cli(["bitmap", "remove", device, name], cleanUp: cleanUp)
        state.withLock { s in s.bitmaps.removeAll { $0.device == device && $0.name == name } }
    }

    /// Ends the tracking of a device whose bitmaps are all removed. Removing
    /// the last bitmap already stops it (DESIGN §7); `ringback untrack` runs
    /// only if the daemon still lists the device, so that this holds for
    /// either behaviour. The daemon removes the tracefs instance.
    func untrack(device: String, cleanUp: Bool = false) throws {
        if try isTracked(device: device, cleanUp: cleanUp) {
            try cli(["untrack", device], cleanUp: cleanUp)
        }
        state.withLock { s in s.tracked.removeAll { $0 == device } }
    }

    /// Whether `query-block` lists the device.
    func isTracked(device: String, cleanUp: Bool = false) throws -> Bool {
        let result = try cli(["qmp", "query-block"], cleanUp: cleanUp)
        guard let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else {
            throw BenchError("ringback qmp query-block printed no list: \(result.stdout.prefix(200))")
        }
        return list.contains { ($0["device"] as? String) == device }
    }

    /// `ringback qmp x-tracker-barrier`: every write completed so far is in
    /// the bitmaps.
    func barrier(device: String) throws {
        try cli(["qmp", "x-tracker-barrier", #"{"node": "\#(device)"}"#])
    }

    struct BitmapInfo {
        var name: String
        var count: UInt64
        var inconsistent: Bool
    }

    /// `ringback bitmap list DEVICE --json`.
    func bitmaps(device: String) throws -> [BitmapInfo] {
        let result = try cli(["bitmap", "list", device, "--json"])
        guard let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else {
            throw BenchError("ringback bitmap list \(device) --json printed no list: \(result.stdout.prefix(200))")
        }
        return list.map { b in
            BitmapInfo(name: b["name"] as? String ?? "?", count: (b["count"] as? NSNumber)?.uint64Value ?? 0,
                       inconsistent: (b["inconsistent"] as? NSNumber)?.boolValue ?? true)
        }
    }

    // MARK: stopping

    /// Removes the bitmaps, untracks the devices, stops the daemon with
    /// SIGTERM (SIGKILL after 5 s) and removes any tracefs instance of a disk
    /// it tracked. Runs once; returns whether SIGTERM alone stopped it (nil
    /// when it was not running).
    @discardableResult
    func stop(cleanUp: Bool) -> Bool? {
        let (process, bitmaps, tracked) = state.withLock { s -> (Process?, [(device: String, name: String)], [String]) in
            if s.stopped { return (nil, [], []) }
            s.stopped = true
            return (s.process, s.bitmaps, s.tracked)
        }
        var byTerm: Bool?
        if let process, process.isRunning {
            for b in bitmaps.reversed() {
                do { try cli(["bitmap", "remove", b.device, b.name], cleanUp: true) } catch {
                    if !cleanUp { warn("\(error)") }
                }
            }
            for device in tracked.reversed() {
                do { try untrack(device: device, cleanUp: true) } catch {
                    if !cleanUp { warn("\(error)") }
                }
            }
            let pid = process.processIdentifier
            kill(pid, SIGTERM)
            byTerm = true
            var waited = 0
            while process.isRunning && waited < 100 { usleep(50_000); waited += 1 }
            if process.isRunning {
                byTerm = false
                warn("ringbackd (pid \(pid)) did not exit within 5 s of SIGTERM; killing it with SIGKILL")
                kill(pid, SIGKILL)
                while process.isRunning { usleep(20_000) }
            }
        }
        // A killed daemon leaves its instances recording; remove them (only
        // those of the disks this benchmark tracked).
        for disk in state.withLock({ $0.disks }).sorted() {
            let path = DaemonProcess.instancePath(disk: disk)
            guard FileManager.default.fileExists(atPath: path) else { continue }
            var removed = false
            for _ in 0..<40 where !removed {
                removed = rmdir(path) == 0 || errno == ENOENT
                if !removed { usleep(50_000) }
            }
            if !removed { warn("could not remove \(path): \(String(cString: strerror(errno))); rmdir it by hand") }
            else if !cleanUp { warn("removed the tracefs instance \(path) that ringbackd left behind") }
        }
        return byTerm
    }
}
