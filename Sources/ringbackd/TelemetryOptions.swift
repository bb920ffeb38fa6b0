import ArgumentParser
import Logging

/// ringbackd's options for its logs and metrics (README "Metrics and logs").
struct TelemetryOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The least severe log records written to stderr.",
                               valueName: Logger.Level.allCases.map(\.rawValue).joined(separator: "|")))
    var logLevel: Logger.Level = .info

    @Option(help: ArgumentHelp("Serve Prometheus metrics at http://HOST:PORT/metrics (loopback only, e.g. 127.0.0.1:9469; port 0: any free port).",
                               valueName: "host:port"))
    var metricsListen: String?

    @Flag(help: "Let --metrics-listen use an address other than loopback (the endpoint has no authentication).")
    var metricsAllowNonLoopback = false

    @Option(help: ArgumentHelp("Write the metrics to this file for node_exporter's textfile collector, replaced atomically.",
                               valueName: "path"))
    var metricsTextfile: String?

    @Option(help: ArgumentHelp("Seconds between rewrites of --metrics-textfile (and once more at shutdown).", valueName: "seconds"))
    var metricsTextfileInterval: Double = 15

    func validate() throws {
        guard metricsTextfileInterval > 0, metricsTextfileInterval.isFinite else {
            throw ValidationError("--metrics-textfile-interval must be a positive number of seconds, got \(metricsTextfileInterval)")
        }
        if let metricsListen, !metricsListen.isEmpty {
            do { _ = try ListenAddress(parsing: metricsListen, allowNonLoopback: metricsAllowNonLoopback) } catch {
                throw ValidationError("\(error)")
            }
        }
    }

    /// Makes every Logger write journald-friendly lines at `logLevel`, and
    /// swift-metrics record into ringbackd's Prometheus registry. First thing
    /// in `run()`: loggers made before it would write nowhere.
    func bootstrap() {
        JournalLogHandler.bootstrap(level: logLevel)
        DaemonMetrics.shared.bootstrap()
    }

    /// Binds the HTTP endpoint and checks the textfile's folder; call before
    /// the daemon loads its bitmaps, so that a bad option stops it first.
    func makeExport() throws -> MetricsExport {
        try MetricsExport(listen: metricsListen, allowNonLoopback: metricsAllowNonLoopback,
                          textfile: metricsTextfile, interval: metricsTextfileInterval)
    }
}
