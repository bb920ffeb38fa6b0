import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The service manager's notification socket, spoken without libsystemd
/// (sd_notify(3), "the protocol"): newline-separated `NAME=value` lines in one
/// datagram to the AF_UNIX socket named by `$NOTIFY_SOCKET`, an absolute path
/// or, with a leading '@', a name in the abstract namespace.
///
/// ringbackd sends `READY=1` once its control socket listens, `STATUS=` lines
/// as the devices and jobs change, `WATCHDOG=1` while its lock can be taken,
/// and `STOPPING=1` when a stop begins. Without `$NOTIFY_SOCKET` (started by
/// hand, or under an init that does not listen) there is no notifier at all.
final class ServiceNotify: @unchecked Sendable {
    /// The socket as given in `$NOTIFY_SOCKET`.
    let address: String
    /// How often the service manager expects `WATCHDOG=1` at the latest
    /// (`$WATCHDOG_USEC`); nil when the unit has no `WatchdogSec=`.
    let watchdogTimeout: TimeInterval?
    private let fd: Int32
    private let sockaddr: (storage: sockaddr_un, length: socklen_t)
    private let sendLock = NSLock()
    private var reportedFailure = false

    /// What the environment of a service started with `Type=notify` holds.
    struct NotifyError: Error, CustomStringConvertible {
        let description: String
    }

    /// The notifier named by the environment, or nil when `$NOTIFY_SOCKET` is
    /// unset or empty. The variables are removed from this process's
    /// environment afterwards, as sd_notify's `unset_environment` does, so
    /// that hooks and other children cannot speak for the daemon.
    static func fromEnvironment() throws(NotifyError) -> ServiceNotify? {
        let env = ProcessInfo.processInfo.environment
        defer {
            unsetenv("NOTIFY_SOCKET")
            unsetenv("WATCHDOG_USEC")
            unsetenv("WATCHDOG_PID")
        }
        guard let address = env["NOTIFY_SOCKET"], !address.isEmpty else { return nil }
        let watchdog = try watchdogTimeout(usec: env["WATCHDOG_USEC"], pid: env["WATCHDOG_PID"])
        return try ServiceNotify(address: address, watchdogTimeout: watchdog)
    }

    /// `$WATCHDOG_USEC` as seconds, if it is meant for this process: systemd
    /// sets `$WATCHDOG_PID` to the main process, and a child that inherited
    /// the variables must not ping on its behalf.
    static func watchdogTimeout(usec: String?, pid: String?) throws(NotifyError) -> TimeInterval? {
        guard let usec, !usec.isEmpty else { return nil }
        if let pid, !pid.isEmpty {
            guard let owner = Int32(pid), owner > 0 else {
                throw NotifyError(description: "WATCHDOG_PID '\(pid)' is not a process id")
            }
            guard owner == getpid() else { return nil }
        }
        guard let micro = UInt64(usec), micro > 0 else {
            throw NotifyError(description: "WATCHDOG_USEC '\(usec)' is not a positive number of microseconds")
        }
        return TimeInterval(micro) / 1_000_000
    }

    init(address: String, watchdogTimeout: TimeInterval?) throws(NotifyError) {
        self.address = address
        self.watchdogTimeout = watchdogTimeout
        sockaddr = try Self.socketAddress(address)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            throw NotifyError(description: "cannot create a datagram socket for NOTIFY_SOCKET \(address): \(String(cString: strerror(errno)))")
        }
    }

    deinit { close(fd) }

    /// `sockaddr_un` for a path, or for an abstract name ('@' becomes the
    /// leading NUL byte; the name's length, not a terminator, ends it: unix(7)).
    static func socketAddress(_ address: String) throws(NotifyError) -> (storage: sockaddr_un, length: socklen_t) {
        var bytes = Array(address.utf8)
        switch bytes.first {
        case UInt8(ascii: "/"): break
        case UInt8(ascii: "@"): bytes[0] = 0
        default:
            throw NotifyError(description: "NOTIFY_SOCKET '\(address)' is neither an absolute path nor an abstract name starting with '@'")
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        // A path needs room for its terminating NUL; an abstract name does not.
        guard bytes.count + (bytes[0] == 0 ? 0 : 1) <= capacity else {
            throw NotifyError(description: "NOTIFY_SOCKET '\(address)' is longer than a socket address can hold (\(capacity) bytes)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
        }
        let base = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        let length = base + bytes.count + (bytes[0] == 0 ? 0 : 1)
        return (addr, socklen_t(length))
    }

    /// Sends `NAME=value` lines in one datagram. A failure is logged once and
    /// not thrown: the daemon runs on without its service manager's ear.
    @discardableResult
    func send(_ lines: [String]) -> Bool {
        // One line per assignment: a STATUS text must not smuggle in another.
        let message = lines.map { $0.replacingOccurrences(of: "\n", with: " ") }.joined(separator: "\n")
        let bytes = Array(message.utf8)
        return sendLock.withLock {
            var addr = sockaddr.storage
            let sent = withUnsafePointer(to: &addr) { a in
                a.withMemoryRebound(to: Glibc.sockaddr.self, capacity: 1) { sa in
                    bytes.withUnsafeBytes { b in
                        sendto(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL), sa, sockaddr.length)
                    }
                }
            }
            if sent == bytes.count {
                reportedFailure = false
                return true
            }
            if !reportedFailure {
                reportedFailure = true
                log("cannot notify the service manager on \(address): \(String(cString: strerror(errno)))")
            }
            return false
        }
    }
}

/// The service side of a running ringbackd: READY once listening, STATUS as
/// the tracked devices and jobs change, WATCHDOG while the daemon's lock can
/// be taken, STOPPING at the end.
final class ServiceHeartbeat: @unchecked Sendable {
    private let notifier: ServiceNotify
    private let daemon: Daemon
    /// Time between beats: at most half the watchdog timeout
    /// (sd_watchdog_enabled(3) advises pinging at half the interval), and at
    /// most 5 s, so that STATUS follows the daemon closely.
    let period: TimeInterval
    /// How long a beat waits for the daemon lock before it calls the daemon
    /// unresponsive: a quarter of the watchdog timeout (a hold that long is
    /// no transaction's), so that a busy moment costs no keep-alive and a
    /// hang still misses enough of them to be restarted.
    let lockWait: TimeInterval
    private let stopped = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private var thread: Thread?
    /// Touched by the beat thread only (and by `ready()` before it starts).
    private var lastStatus = ""
    private var lastJobCount = 0

    init(notifier: ServiceNotify, daemon: Daemon) {
        self.notifier = notifier
        self.daemon = daemon
        let beat = min(notifier.watchdogTimeout.map { max($0 / 2, 0.01) } ?? 5, 5)
        period = beat
        lockWait = notifier.watchdogTimeout.map { max($0 / 4, beat / 2) } ?? beat / 2
    }

    /// `READY=1` with the first status, then beats on a thread of its own,
    /// so that a busy dispatch queue cannot starve the watchdog.
    func ready() {
        lastStatus = status() ?? "starting"
        notifier.send(["READY=1", "STATUS=\(lastStatus)"])
        let t = Thread { [self] in
            while stopped.wait(timeout: .now() + period) == .timedOut { beat() }
            finished.signal()
        }
        t.name = "ringbackd-heartbeat"
        thread = t
        t.start()
    }

    /// One beat: the watchdog ping only when the daemon's lock was free within
    /// `lockWait` (a deadlocked daemon is then restarted by the service
    /// manager), and STATUS when it changed.
    private func beat() {
        var lines: [String] = []
        let now: String
        if let healthy = status() {
            now = healthy
            if notifier.watchdogTimeout != nil { lines.append("WATCHDOG=1") }
        } else {
            now = "not responding: the daemon lock was not free for \(String(format: "%.1f", lockWait)) s"
            log("watchdog: \(now); no keep-alive sent")
        }
        if now != lastStatus { lines.append("STATUS=\(now)") }
        lastStatus = now
        if !lines.isEmpty { notifier.send(lines) }
    }

    /// A one-line summary for `STATUS=`, or nil when the daemon's lock could
    /// not be taken within `lockWait` (the health check). The job count
    /// is not waited for: the job lock is held for a whole transaction,
    /// hooks included, which is no sign of a hang; the last count stands.
    private func status() -> String? {
        guard let figures = daemon.trackingFigures(within: lockWait) else { return nil }
        if let jobs = daemon.jobs.activeCount(within: min(0.1, period / 4)) { lastJobCount = jobs }
        return "tracking \(plural(figures.devices, "device")) (\(plural(figures.bitmaps, "bitmap"))), "
            + "\(plural(lastJobCount, "job")) running"
    }

    private func plural(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

    /// `STOPPING=1`; the beats end, so a stop that hangs is the stop timeout's
    /// business, not the watchdog's.
    func stopping() {
        if thread != nil {
            stopped.signal()
            finished.wait()
            thread = nil
        }
        notifier.send(["STOPPING=1", "STATUS=stopping: cancelling jobs and saving bitmaps"])
    }
}
