import Foundation
import Synchronization

/// What the benchmark must undo however it ends — normally, by an error, or
/// by SIGINT/SIGTERM/SIGHUP: the child it is running, the loop devices it
/// attached, and the files and folders it made.
final class Janitor: Sendable {
    static let shared = Janitor()

    private struct State {
        var loopDevices: [String] = []
        var paths: [String] = []
        var child: Int32?
        var cleanedUp = false
    }

    private let state = Mutex(State())

    /// Kept alive for the life of the process; set once, from the main thread,
    /// before any signal can be handled.
    nonisolated(unsafe) private static var signalSources: [any DispatchSourceSignal] = []

    func adopt(loopDevice: String) { state.withLock { $0.loopDevices.append(loopDevice) } }
    func adopt(path: String) { state.withLock { $0.paths.append(path) } }
    func childStarted(_ pid: Int32) { state.withLock { $0.child = pid } }
    func childEnded() { state.withLock { $0.child = nil } }

    /// Routes the terminating signals to `interrupted`, which cleans up and
    /// exits, instead of letting them kill the process with devices attached.
    func installSignalHandlers() {
        for number in [SIGINT, SIGTERM, SIGHUP] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { Janitor.shared.interrupted(by: number) }
            source.resume()
            Janitor.signalSources.append(source)
        }
    }

    private func interrupted(by number: Int32) -> Never {
        let name = number == SIGINT ? "SIGINT" : number == SIGTERM ? "SIGTERM" : "SIGHUP"
        FileHandle.standardError.write(Data("\nringback-bench: \(name): stopping and cleaning up\n".utf8))
        if let child = state.withLock({ $0.child }) { kill(child, SIGTERM) }
        cleanUp()
        exit(128 + number)
    }

    /// Detaches the loop devices and removes the paths, newest first. Runs
    /// once; later calls do nothing.
    func cleanUp() {
        let work: (loops: [String], paths: [String])? = state.withLock { s in
            if s.cleanedUp { return nil }
            s.cleanedUp = true
            return (s.loopDevices, s.paths)
        }
        guard let work else { return }
        for device in work.loops.reversed() {
            // A device still open (a child killed a moment ago) is detached by
            // the kernel when it is closed (LO_FLAGS_AUTOCLEAR); retry briefly
            // for the case where losetup itself fails.
            for attempt in 0..<10 {
                if (try? Child.run(["losetup", "-d", device]))?.succeeded == true { break }
                if attempt == 9 { warn("could not detach \(device); detach it with losetup -d \(device)") }
                usleep(200_000)
            }
        }
        for path in work.paths.reversed() {
            try? FileManager.default.removeItem(atPath: path)
        }
    }
}

/// Prints a warning on stderr.
func warn(_ message: String) {
    FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
}

/// Prints a line on stdout at once, also when stdout is a pipe (tee, CI logs).
func say(_ line: String) {
    print(line)
    fflush(nil)
}
