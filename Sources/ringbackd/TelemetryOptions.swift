import ArgumentParser
import Logging

/// ringbackd's options for its logs (README "Metrics and logs").
struct TelemetryOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The least severe log records written to stderr.",
                               valueName: Logger.Level.allCases.map(\.rawValue).joined(separator: "|")))
    var logLevel: Logger.Level = .info

    /// Makes every Logger write journald-friendly lines at `logLevel`. First
    /// thing in `run()`: loggers made before it would write nowhere.
    func bootstrap() {
        JournalLogHandler.bootstrap(level: logLevel)
    }
}
