import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The hooks of DESIGN §11: executables in a folder (`/etc/ringback/hooks.d`)
/// run in name order at each phase of a quiesce — `pre-freeze` (a database
/// flushes and holds its writes), `frozen` (inside the freeze), `post-thaw` —
/// with the devices and mount points in their environment and a time limit.
public struct Hooks: Sendable {
    public enum Phase: String, Sendable { case preFreeze = "pre-freeze", frozen, postThaw = "post-thaw" }

    public let directory: String
    public let timeout: Double

    public init(directory: String, timeout: Double) {
        self.directory = directory
        self.timeout = timeout
    }

    /// The hooks to run: executable regular files, by name; none when the
    /// folder does not exist.
    public var executables: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.sorted().map { directory + "/" + $0 }.filter { path in
            var st = stat()
            return !path.hasSuffix("~") && stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFREG && access(path, X_OK) == 0
        }
    }

    /// Runs every hook for `phase`; the first that fails or overruns ends the
    /// phase with an error naming it. `environment` adds RINGBACK_* variables.
    public func run(_ phase: Phase, environment: [String: String]) throws {
        for hook in executables {
            try runOne(hook, phase, environment)
        }
    }

    private func runOne(_ hook: String, _ phase: Phase, _ environment: [String: String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: hook)
        p.arguments = [phase.rawValue]
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        env["RINGBACK_PHASE"] = phase.rawValue
        p.environment = env
        let errors = Pipe()
        p.standardError = errors
        p.standardOutput = FileHandle.nullDevice
        p.standardInput = FileHandle.nullDevice
        let done = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in done.signal() }
        do { try p.run() } catch { throw HookError("hook \(hook) (\(phase.rawValue)) could not start: \(error)") }
        // Read stderr as it comes, so a chatty hook cannot block on a full pipe.
        final class Box: @unchecked Sendable { var data = Data() }
        let box = Box()
        let reader = Thread { box.data = errors.fileHandleForReading.readDataToEndOfFile() }
        reader.start()
        if done.wait(timeout: .now() + timeout) == .timedOut {
            // The hook and whatever it started: Foundation gives the child a
            // process group of its own.
            kill(-p.processIdentifier, SIGKILL)
            kill(p.processIdentifier, SIGKILL)
            done.wait()
            throw HookError("hook \(hook) (\(phase.rawValue)) did not finish within \(Self.seconds(timeout)) and was killed")
        }
        guard p.terminationReason == .exit && p.terminationStatus == 0 else {
            usleep(20_000)
            let text = String(decoding: box.data.suffix(400), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let how = p.terminationReason == .exit ? "exited with status \(p.terminationStatus)" : "was killed by signal \(p.terminationStatus)"
            throw HookError("hook \(hook) (\(phase.rawValue)) \(how)" + (text.isEmpty ? "" : ": \(text)"))
        }
    }

    static func seconds(_ s: Double) -> String { s == s.rounded() ? "\(Int(s)) s" : String(format: "%.1f s", s) }
}

/// A hook that failed, timed out or could not start.
public struct HookError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
