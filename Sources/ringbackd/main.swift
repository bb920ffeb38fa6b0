import ArgumentParser
import Config
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

            It runs the backup plans of its configuration file on their schedules; SIGHUP reloads
            the file (a file with mistakes is reported and the running configuration kept).

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

    @Option(help: ArgumentHelp("Hooks run before a freeze, inside it and after the thaw (executables, in name order; "
                               + "default: [daemon] hooks-dir, else /etc/ringback/hooks.d).", valueName: "dir"))
    var hooksDir: String?

    @Option(help: ArgumentHelp("Seconds a hook may run before it is killed and its step fails (default: [daemon] hook-timeout, else 60).",
                               valueName: "seconds"))
    var hookTimeout: Double?

    @Option(help: ArgumentHelp("Seconds a freeze may last without word from ringbackd before the watchdog thaws it "
                               + "(default: [daemon] freeze-timeout, else 10).", valueName: "seconds"))
    var freezeTimeout: Double?

    @Option(help: ArgumentHelp("The configuration file with the backup plans (a missing file at the default path means no plans).",
                               valueName: "path"))
    var config: String?

    @Flag(help: "Check the configuration file, print its plans and exit: 0 when it is valid, 1 when not.")
    var checkConfig = false

    @OptionGroup(title: "Logs and metrics")
    var telemetry: TelemetryOptions

    func run() throws {
        if checkConfig { throw ExitCode(checkConfigFile()) }
        telemetry.bootstrap()
        // Read (and cleared from the environment) before any child is spawned.
        let notifier: ServiceNotify?
        do { notifier = try ServiceNotify.fromEnvironment() } catch { throw ValidationError("\(error)") }
        let daemon = Daemon(stateDirectory: stateDir, bootIDPath: bootIdFile, bufferKiB: traceBufferKib)
        // The configuration first: a missing --config file stops the start before anything is touched.
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        let plans = PlanScheduler(daemon: daemon, configPath: config)
        do { try plans.load() } catch { throw ValidationError("\(error)") }
        daemon.plans = plans
        // Command-line flags win over the file's [daemon] and [metrics] sections.
        let settings = plans.configuration
        var gid: gid_t?
        if let group = group ?? settings.daemon.group {
            guard let g = getgrnam(group) else { throw ValidationError("unknown group '\(group)'") }
            gid = g.pointee.gr_gid
        }
        let freezeTimeout = freezeTimeout ?? settings.daemon.freezeTimeout.map { Double($0.seconds) } ?? 10
        let hookTimeout = hookTimeout ?? settings.daemon.hookTimeout.map { Double($0.seconds) } ?? 60
        guard freezeTimeout > 0, hookTimeout > 0 else { throw ValidationError("--freeze-timeout and --hook-timeout must be positive") }
        daemon.quiesceSettings.hooks = Hooks(directory: hooksDir ?? settings.daemon.hooksDir ?? "/etc/ringback/hooks.d",
                                             timeout: hookTimeout)
        daemon.quiesceSettings.freezeTimeout = freezeTimeout
        daemon.quiesceSettings.watchdog = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        // Before restore: a port in use or a missing folder stops the start
        // before bitmaps are loaded and marked in use.
        let metrics = try MetricsExport(listen: telemetry.metricsListen ?? settings.metrics.listen?.description,
                                        allowNonLoopback: telemetry.metricsAllowNonLoopback,
                                        textfile: telemetry.metricsTextfile ?? settings.metrics.textfile,
                                        interval: telemetry.metricsTextfileInterval)
        try daemon.restore()
        let server = QMPServer(path: socket, allowedGroup: gid,
                               greeting: QMP.greeting(major: RingbackVersion.major, minor: RingbackVersion.minor,
                                                      micro: RingbackVersion.micro, package: "ringback \(RingbackVersion.string)")) {
            command, arguments in
            try daemon.handle(command, Arguments(values: arguments))
        }
        daemon.emit = { [weak server] name, data in server?.broadcast(event: name, data: data) }
        try server.start()
        logger.info("listening on \(socket), state in \(stateDir)", metadata: ["socket": "\(socket)", "state-dir": "\(stateDir)"])
        metrics.start(daemon: daemon)
        plans.start()
        // Type=notify: the service is up once clients can connect.
        let service = notifier.map { ServiceHeartbeat(notifier: $0, daemon: daemon) }
        service?.ready()

        // Wait for SIGTERM/SIGINT on a dispatch source, then stop cleanly.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        signal(SIGHUP, SIG_IGN)
        let done = DispatchSemaphore(value: 0)
        var sources = [SIGTERM, SIGINT].map { sig -> DispatchSourceSignal in
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { done.signal() }
            s.resume()
            return s
        }
        // SIGHUP reloads the configuration, one reload at a time.
        let reload = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "ringbackd-reload"))
        reload.setEventHandler { plans.reload() }
        reload.resume()
        sources.append(reload)
        // The sources must outlive the wait: an optimised build would otherwise
        // release (and cancel) them right after creation, and no signal would
        // ever stop the daemon.
        withExtendedLifetime(sources) { done.wait() }
        logger.info("stopping: saving bitmaps")
        service?.stopping()
        // No plan run starts any more, and the jobs of those running are all
        // started, so that the shutdown cancels them; then the runs record it.
        plans.beginStop()
        server.stop()
        daemon.shutdown()
        plans.waitForRuns(timeout: 10)
        metrics.stop()
        logger.info("stopped")
    }

    /// `--check-config`: the file's plans, or its problems on stderr.
    func checkConfigFile() -> Int32 {
        let path = config ?? RingbackConfig.defaultPath
        do {
            let c = try RingbackConfig.load(path: path)
            print("\(path): valid, \(c.plans.count) plan\(c.plans.count == 1 ? "" : "s")")
            for p in c.plans {
                // An interval counts from the plan's last run, which only the daemon knows.
                var when = p.schedule.text
                if case .calendar = p.schedule.rule {
                    when += " (next \(p.schedule.next(after: Date()).map(CivilTime.iso8601) ?? "never"))"
                }
                print("  \(p.name): \(when), \(p.devices.map(\.name).joined(separator: ", ")) → "
                      + "\(p.repository)/<device-id>, \(p.format.rawValue)")
            }
            return 0
        } catch let e as ConfigFileError where e.missing && config == nil {
            print("no config file at \(path): no backup plans")
            return 0
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            return 1
        }
    }
}

// The freeze watchdog is this same executable in another mode (DESIGN §11):
// `ringbackd --x-freeze-watchdog TIMEOUT MOUNT...`, spawned by the daemon.
let arguments = CommandLine.arguments
if arguments.count >= 3 && arguments[1] == QuiesceSettings.watchdogFlag {
    exit(FreezeWatchdog.run(mountPoints: Array(arguments[3...]), timeout: Double(arguments[2]) ?? 10))
}
RingbackDaemon.main()
