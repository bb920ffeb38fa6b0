import Foundation

/// A child process that has exited: its status, what it printed, and the wall
/// clock from launch to exit.
struct ChildResult: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
    var seconds: Double
    var succeeded: Bool { status == 0 }
}

/// A child that could not be started or did not exit 0.
struct ChildFailure: Error, CustomStringConvertible {
    var command: [String]
    var reason: String
    var description: String { "`\(command.joined(separator: " "))` \(reason)" }
}

/// Runs the programs the benchmark measures and the tools that set it up.
enum Child {
    /// The full path of `name` from PATH; a name with a slash is taken as a path.
    static func executable(_ name: String) -> String? {
        let files = FileManager.default
        if name.contains("/") { return files.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        for dir in path.split(separator: ":") where files.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// Runs `args` and waits for it. The program is resolved before the clock
    /// starts, so that the time is the program's own and not a PATH search.
    /// Once a signal has begun the clean-up, only the clean-up's own children
    /// (`cleanUp: true`) start; any other caller is parked until the process
    /// exits, so that nothing new runs on devices being detached.
    static func run(_ args: [String], cleanUp: Bool = false) throws -> ChildResult {
        if !cleanUp && Janitor.shared.isStopping { Janitor.parkForever() }
        guard let program = executable(args[0]) else {
            throw ChildFailure(command: args, reason: "cannot run: \(args[0]) is not installed")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = Array(args.dropFirst())
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice

        let clock = ContinuousClock()
        let start = clock.now
        do { try process.run() } catch {
            throw ChildFailure(command: args, reason: "cannot run: \(error.localizedDescription)")
        }
        if !cleanUp && !Janitor.shared.childStarted(process.processIdentifier) {
            kill(process.processIdentifier, SIGKILL)
            Janitor.parkForever()
        }
        defer { if !cleanUp { Janitor.shared.childEnded() } }

        // Drain both pipes at once: a child blocked on a full stderr pipe would
        // never close stdout.
        let stderrText = Collected()
        let errHandle = err.fileHandleForReading
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            stderrText.set(errHandle.readDataToEndOfFile())
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        let elapsed = start.duration(to: clock.now)

        return ChildResult(
            status: process.terminationStatus,
            stdout: String(decoding: outData, as: UTF8.self),
            stderr: stderrText.text,
            seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }

    /// Runs `args` and throws unless it exits 0; returns the result.
    @discardableResult
    static func check(_ args: [String], cleanUp: Bool = false) throws -> ChildResult {
        let result = try run(args, cleanUp: cleanUp)
        guard result.succeeded else {
            let said = (result.stderr + result.stdout).trimmingCharacters(in: .whitespacesAndNewlines)
            let tail = said.split(separator: "\n").suffix(4).joined(separator: " | ")
            throw ChildFailure(command: args, reason: "exited with status \(result.status): \(tail)")
        }
        return result
    }
}

/// Output collected on another thread, handed back once that thread is done.
private final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()

    func set(_ newData: Data) { lock.withLock { data = newData } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }
}
