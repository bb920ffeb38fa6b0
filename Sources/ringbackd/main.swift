import ArgumentParser
import ControlProtocol
import Foundation
import Quiesce

/// ringbackd: tracks writes to block devices into dirty bitmaps and serves
/// the QMP control socket that the `ringback` CLI and QMP clients use.
struct RingbackDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringbackd",
        abstract: "The ringback daemon: write tracking, dirty bitmaps and backups over a QMP socket.",
        discussion: """
            Listens on the control socket (mode 0600; root or --group may connect), re-attaches to
            the devices it tracked before a restart and loads their persistent bitmaps; any doubt
            (a crash, a reboot, lost trace events, another device) makes a bitmap inconsistent.
            SIGTERM or SIGINT stop it cleanly: bitmaps saved, tracefs instances left recording.

            Example: ringbackd --socket /run/ringback/qmp.sock --state-dir /var/lib/ringback
            """,
        version: RingbackVersion.string)

    @Option(help: "Control socket path.")
    var socket: String = QMP.socketPath

    @Option(help: "State directory: persistent bitmaps and the list of tracked devices.")
    var stateDir: String = ProcessInfo.processInfo.environment["RINGBACK_STATE_DIR"] ?? "/var/lib/ringback"

    @Option(help: "A group whose members may also use the socket.")
    var group: String?

    @Option(help: "Per-CPU tracefs buffer in KiB for each tracked disk.")
    var traceBufferKib: Int = 4096

    @Option(help: "Where the boot id is read (a reboot makes persistent bitmaps inconsistent).")
    var bootIdFile: String = "/proc/sys/kernel/random/boot_id"

    @Option(help: "Hooks run before a freeze, inside it and after the thaw (executables, in name order).")
    var hooksDir: String = "/etc/ringback/hooks.d"

    @Option(help: "Seconds a hook may run before it is killed and its step fails.")
    var hookTimeout: Double = 60

    @Option(help: "Seconds a freeze may last without word from ringbackd before the watchdog thaws it.")
    var freezeTimeout: Double = 10

    func run() throws {
        // Read (and cleared from the environment) before any child is spawned.
        let notifier: ServiceNotify?
        do { notifier = try ServiceNotify.fromEnvironment() } catch { throw ValidationError("\(error)") }
        var gid: gid_t?
        if let group {
            guard let g = getgrnam(group) else { throw ValidationError("unknown group '\(group)'") }
            gid = g.pointee.gr_gid
        }
        guard freezeTimeout > 0, hookTimeout > 0 else { throw ValidationError("--freeze-timeout and --hook-timeout must be positive") }
        let daemon = Daemon(stateDirectory: stateDir, bootIDPath: bootIdFile, bufferKiB: traceBufferKib)
        daemon.quiesceSettings.hooks = Hooks(directory: hooksDir, timeout: hookTimeout)
        daemon.quiesceSettings.freezeTimeout = freezeTimeout
        daemon.quiesceSettings.watchdog = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        try daemon.restore(log: { log($0) })
        let server = QMPServer(path: socket, allowedGroup: gid,
                               greeting: QMP.greeting(major: RingbackVersion.major, minor: RingbackVersion.minor,
                                                      micro: RingbackVersion.micro, package: "ringback \(RingbackVersion.string)")) {
            command, arguments in
            try daemon.handle(command, Arguments(values: arguments))
        }
        daemon.emit = { [weak server] name, data in server?.broadcast(event: name, data: data) }
        try server.start()
        log("listening on \(socket), state in \(stateDir)")
        // Type=notify: the service is up once clients can connect.
        let service = notifier.map { ServiceHeartbeat(notifier: $0, daemon: daemon) }
        service?.ready()

        // Wait for SIGTERM/SIGINT on a dispatch source, then stop cleanly.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let done = DispatchSemaphore(value: 0)
        let sources = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { done.signal() }
            s.resume()
            return s
        }
        // The sources must outlive the wait: an optimised build would otherwise
        // release (and cancel) them right after creation, and no signal would
        // ever stop the daemon.
        withExtendedLifetime(sources) { done.wait() }
        log("stopping: saving bitmaps")
        service?.stopping()
        server.stop()
        daemon.shutdown()
        log("stopped")
    }
}

func log(_ message: String) {
    FileHandle.standardError.write(Data("ringbackd: \(message)\n".utf8))
}

// The freeze watchdog is this same executable in another mode (DESIGN §11):
// `ringbackd --x-freeze-watchdog TIMEOUT MOUNT...`, spawned by the daemon.
let arguments = CommandLine.arguments
if arguments.count >= 3 && arguments[1] == QuiesceSettings.watchdogFlag {
    exit(FreezeWatchdog.run(mountPoints: Array(arguments[3...]), timeout: Double(arguments[2]) ?? 10))
}
RingbackDaemon.main()
