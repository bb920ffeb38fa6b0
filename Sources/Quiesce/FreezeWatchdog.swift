import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The process that holds a freeze (DESIGN §11: nothing is ever left frozen).
///
/// It freezes the plan's filesystems itself, answers `frozen` on its output,
/// then thaws them as soon as any of these happens: the daemon asks (`thaw`),
/// the daemon dies (its end of the input pipe closes), or no word came from
/// the daemon for `timeout` seconds. `ping` restarts that clock (a copy held
/// frozen sends it as it makes progress); `check` reports the time left
/// without restarting it. Protocol, one line each way:
///
///     → (start)            ← frozen | error TEXT
///     → ping | check       ← ok MILLISECONDS
///     → thaw               ← thawed
///     (timeout)            ← expired (then exit)
public enum FreezeWatchdog {
    /// Runs the watchdog on file descriptors `input`/`output`; returns its exit status.
    public static func run(mountPoints: [String], timeout: Double, input: Int32 = 0, output: Int32 = 1) -> Int32 {
        // Ignore the signals a terminal or a service manager sends the daemon's
        // group: only the pipe and the clock end a freeze.
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        var frozen: [String] = []
        func thawAll() {
            for m in frozen.reversed() {
                do { try FreezeCalls.thaw(m) } catch { say(output, "warning cannot \(error)") }
            }
            frozen = []
        }
        for m in mountPoints {
            do {
                try FreezeCalls.freeze(m)
                frozen.append(m)
            } catch {
                thawAll()
                say(output, "error cannot \(error.operation): \(error)")
                return 1
            }
        }
        say(output, "frozen")
        var deadline = monotonicNow() + timeout
        var line: [UInt8] = []
        while true {
            let left = deadline - monotonicNow()
            if left <= 0 {
                thawAll()
                say(output, "expired")
                return 2
            }
            var pfd = pollfd(fd: input, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, Int32(min(left * 1000, 60_000).rounded(.up)))
            if rc < 0 { if errno == EINTR { continue }; thawAll(); return 3 }
            if rc == 0 { continue }
            var byte: UInt8 = 0
            let n = read(input, &byte, 1)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                thawAll()   // the daemon is gone
                return 0
            }
            if byte != UInt8(ascii: "\n") { line.append(byte); continue }
            let command = String(decoding: line, as: UTF8.self)
            line = []
            switch command {
            case "ping":
                deadline = monotonicNow() + timeout
                say(output, "ok \(Int((deadline - monotonicNow()) * 1000))")
            case "check":
                say(output, "ok \(Int((deadline - monotonicNow()) * 1000))")
            case "thaw":
                thawAll()
                say(output, "thawed")
                return 0
            default:
                say(output, "error unknown command '\(command)'")
            }
        }
    }

    private static func say(_ fd: Int32, _ text: String) {
        let bytes = Array((text + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
            off += n
        }
    }
}
