import Foundation
import Synchronization

/// What the benchmark must undo however it ends — normally, by an error, or
/// by SIGINT/SIGTERM/SIGHUP: the child it is running, the daemon it started,
/// the loop devices it attached, and the files and folders it made.
final class Janitor: Sendable {
    static let shared = Janitor()

    private struct State {
        var actions: [@Sendable () -> Void] = []
        var loopDevices: [String] = []
        var paths: [String] = []
        var child: Int32?
        /// Set by a terminating signal: no new child may start, except the
        /// clean-up's own.
        var stopping = false
        var cleanedUp = false
        var cleanUpFinished = false
    }

    private let state = Mutex(State())

    /// Kept alive for the life of the process; set once, from the main thread,
    /// before any signal can be handled.
    nonisolated(unsafe) private static var signalSources: [any DispatchSourceSignal] = []

    func adopt(loopDevice: String) { state.withLock { $0.loopDevices.append(loopDevice) } }
    func adopt(path: String) { state.withLock { $0.paths.append(path) } }
    /// A clean-up step that runs before the loop devices are detached (newest
    /// first): stopping the daemon, removing tracefs instances.
    func adopt(cleanUp action: @escaping @Sendable () -> Void) { state.withLock { $0.actions.append(action) } }

    /// Records the running child, so that a signal can stop it. False when
    /// the benchmark is already stopping: the caller must not go on.
    func childStarted(_ pid: Int32) -> Bool {
        state.withLock { s in
            if s.stopping { return false }
            s.child = pid
            return true
        }
    }
    func childEnded() { state.withLock { $0.child = nil } }
    var isStopping: Bool { state.withLock { $0.stopping } }

    /// Detaches a loop device now (its set-up is done) instead of at exit.
    func detachNow(loopDevice: String) {
        state.withLock { $0.loopDevices.removeAll { $0 == loopDevice } }
        detach(loopDevice)
    }

    /// Removes a file or folder now instead of at exit.
    func removeNow(path: String) {
        state.withLock { $0.paths.removeAll { $0 == path } }
        try? FileManager.default.removeItem(atPath: path)
    }

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
        let child = state.withLock { s -> Int32? in
            s.stopping = true
            return s.child
        }
        if let child { kill(child, SIGTERM) }
        cleanUp()
        exit(128 + number)
    }

    /// Runs the clean-up steps, detaches the loop devices and removes the
    /// paths, newest first. Runs once; a second caller (the main thread while
    /// a signal handler cleans up) waits until the first is done.
    func cleanUp() {
        let work: (actions: [@Sendable () -> Void], loops: [String], paths: [String])? = state.withLock { s in
            if s.cleanedUp { return nil }
            s.cleanedUp = true
            return (s.actions, s.loopDevices, s.paths)
        }
        guard let work else {
            while !state.withLock({ $0.cleanUpFinished }) { usleep(50_000) }
            return
        }
        for action in work.actions.reversed() { action() }
        for device in work.loops.reversed() { detach(device) }
        for path in work.paths.reversed() {
            try? FileManager.default.removeItem(atPath: path)
        }
        state.withLock { $0.cleanUpFinished = true }
    }

    private func detach(_ device: String) {
        // A device still open (a child killed a moment ago) is detached by
        // the kernel when it is closed (LO_FLAGS_AUTOCLEAR); retry briefly
        // for the case where losetup itself fails.
        for attempt in 0..<10 {
            if (try? Child.run(["losetup", "-d", device], cleanUp: true))?.succeeded == true { break }
            if attempt == 9 { warn("could not detach \(device); detach it with losetup -d \(device)") }
            usleep(200_000)
        }
    }

    /// Blocks the calling thread for good: the signal handler that is
    /// cleaning up ends the process.
    static func parkForever() -> Never {
        while true { sleep(60) }
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
