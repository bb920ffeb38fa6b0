import BlockIO
import CShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's side of a freeze: a `FreezeWatchdog` process that froze the
/// plan's filesystems and thaws them when asked, when this process dies, or
/// when its timeout passes. With an empty plan nothing is frozen and nothing
/// is spawned.
public final class FreezeHold: @unchecked Sendable {
    public let plan: FreezePlan
    public let timeout: Double
    private var pid: pid_t = 0
    private var toWatchdog: Int32 = -1
    private var fromWatchdog: Int32 = -1
    private var buffered: [UInt8] = []
    private var finished = false
    /// When the filesystems were frozen (monotonic seconds).
    public private(set) var frozenAt = 0.0

    /// How a freeze ended.
    public enum Thaw: Equatable, Sendable {
        /// Thawed on request after `seconds` frozen.
        case requested(seconds: Double)
        /// The watchdog's timeout passed first: the freeze ended on its own.
        case expired(seconds: Double)
    }

    /// Freezes `plan` through a watchdog started as `executable arguments`
    /// (followed by the timeout and the mount points); returns once frozen.
    public init(plan: FreezePlan, timeout: Double, executable: String, arguments: [String]) throws {
        self.plan = plan
        self.timeout = timeout
        guard !plan.mountPoints.isEmpty else { finished = true; return }
        var input: [Int32] = [0, 0], output: [Int32] = [0, 0]
        // Close-on-exec in this process: no other child (a hook) may hold the
        // pipe, or the watchdog would not see this daemon die.
        guard rb_pipe_cloexec(&input) == 0 else { throw SystemError(errno: errno, "create a pipe for the freeze watchdog") }
        guard rb_pipe_cloexec(&output) == 0 else {
            let e = errno; close(input[0]); close(input[1])
            throw SystemError(errno: e, "create a pipe for the freeze watchdog")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        let argv = [executable] + arguments + [String(timeout)] + plan.mountPoints
        var cargs = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        let rc = posix_spawn(&pid, executable, &actions, nil, &cargs, environ)
        close(input[0]); close(output[1])
        toWatchdog = input[1]; fromWatchdog = output[0]
        guard rc == 0 else {
            close(toWatchdog); close(fromWatchdog); finished = true
            throw SystemError(errno: rc, "start the freeze watchdog \(executable)")
        }
        // FIFREEZE writes back every dirty page first; give it time.
        let first = try readLine(timeout: max(60, timeout))
        guard first == "frozen" else {
            finish()
            throw FreezeError(first.hasPrefix("error ") ? String(first.dropFirst(6)) : "the freeze watchdog said '\(first)'")
        }
        frozenAt = monotonicNow()
    }

    deinit { finish() }

    /// Seconds left before the watchdog thaws on its own; 0 once it has.
    public func remaining() -> Double { ask("check") }

    /// Restarts the watchdog's clock; returns the seconds now left (0 if it already thawed).
    @discardableResult
    public func ping() -> Double { ask("ping") }

    /// Thaws (or learns that the timeout already did).
    public func thaw() -> Thaw {
        guard !finished else { return .requested(seconds: 0) }
        let held = monotonicNow() - frozenAt
        send("thaw")
        let reply = (try? readLine(timeout: 30)) ?? "lost"
        finish()
        return reply == "thawed" ? .requested(seconds: held) : .expired(seconds: min(held, timeout))
    }

    private func ask(_ command: String) -> Double {
        guard !finished else { return 0 }
        send(command)
        guard let reply = try? readLine(timeout: 10), reply.hasPrefix("ok "), let ms = Double(reply.dropFirst(3)) else {
            return 0
        }
        return ms / 1000
    }

    private func send(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(toWatchdog, $0.baseAddress, $0.count) }
    }

    private func readLine(timeout: Double) throws -> String {
        let deadline = monotonicNow() + timeout
        while true {
            if let nl = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                return line
            }
            let left = deadline - monotonicNow()
            guard left > 0 else { throw FreezeError("the freeze watchdog did not answer within \(Int(timeout)) s") }
            var pfd = pollfd(fd: fromWatchdog, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, Int32(left * 1000) + 1)
            if rc < 0 && errno == EINTR { continue }
            if rc <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 256)
            let n = chunk.withUnsafeMutableBytes { read(fromWatchdog, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw FreezeError("the freeze watchdog exited") }
            buffered += chunk[..<n]
        }
    }

    /// Closes the pipe (the watchdog thaws if it has not) and reaps it.
    private func finish() {
        guard !finished else { return }
        finished = true
        close(toWatchdog)
        close(fromWatchdog)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
}

/// A freeze that could not be taken or held.
public struct FreezeError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
