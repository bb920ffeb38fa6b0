import ArgumentParser
import Foundation
import Logging
import Synchronization

/// ringbackd's logger. Every record goes to stderr as one line (see
/// `JournalLogHandler`); put what a record is about in its metadata
/// (`device`, `job`, `bitmap`, `image`, ...), not only in its text.
let logger = Logger(label: "ringbackd")

/// Writes each record as one line on stderr in the form journald reads
/// (sd-daemon(3)): a syslog priority prefix `<N>` that journald strips and
/// keeps as the record's PRIORITY, the message, then the metadata as
/// `key=value` pairs sorted by key.
///
///     <4>bitmap 'nightly' on /dev/sdb is inconsistent: ... bitmap=nightly device=/dev/sdb
///
/// journald adds its own timestamp, so under journald (stderr is the stream
/// named by `$JOURNAL_STREAM`, systemd.exec(5)) a line carries none; anywhere
/// else it carries a local RFC 3339 time, the level and the program name:
///
///     <6>2025-06-01T02:30:00.123+02:00 info ringbackd: listening on ... socket=/run/ringback/qmp.sock
struct JournalLogHandler: LogHandler {
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    /// False under journald, which stamps every line itself.
    let timestamps: Bool

    init(level: Logger.Level, timestamps: Bool) {
        logLevel = level
        self.timestamps = timestamps
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { $1 } }
        if let own = event.metadata { all.merge(own) { $1 } }
        if let error = event.error { all["error"] = .string("\(error)") }
        let line = Self.line(level: event.level, message: event.message.description, metadata: all,
                             time: timestamps ? Self.localTimestamp() : nil)
        StandardError.write(line)
    }

    /// One record as one line, newline included.
    static func line(level: Logger.Level, message: String, metadata: Logger.Metadata, time: String?) -> String {
        var s = "<\(priority(level))>"
        if let time { s += "\(time) \(level.rawValue) ringbackd: " }
        s += oneLine(message)
        for key in metadata.keys.sorted() {
            s += " \(key)=\(quoted(render(metadata[key]!)))"
        }
        return s + "\n"
    }

    /// The syslog priority of a level (RFC 5424): journald keeps it, so
    /// `journalctl -p warning` shows warnings and worse.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    private static func render(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): c.description
        case .array(let a): "[" + a.map(render).joined(separator: ",") + "]"
        case .dictionary(let d): "{" + d.keys.sorted().map { "\($0)=\(render(d[$0]!))" }.joined(separator: ",") + "}"
        }
    }

    /// A record is one line: a newline inside a message or value would start
    /// a new journal entry without its priority.
    private static func oneLine(_ s: String) -> String {
        guard s.contains(where: { $0.isNewline }) else { return s }
        return s.replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// A value stays one `key=value` token: quoted (with `"` and `\` escaped)
    /// when it is empty or holds a space, a quote or an `=`.
    private static func quoted(_ value: String) -> String {
        let plain = !value.isEmpty && !value.contains { $0 == " " || $0 == "\"" || $0 == "=" || $0 == "\\" || $0.isNewline || $0 == "\t" }
        if plain { return value }
        let escaped = value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        return "\"" + oneLine(escaped) + "\""
    }

    /// Local time, RFC 3339 with milliseconds and the UTC offset.
    static func localTimestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var seconds = ts.tv_sec
        localtime_r(&seconds, &tm)
        let offset = tm.tm_gmtoff / 60
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03d%@%02d:%02d",
                      Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday), Int(tm.tm_hour), Int(tm.tm_min),
                      Int(tm.tm_sec), Int(ts.tv_nsec / 1_000_000), offset < 0 ? "-" : "+",
                      abs(offset) / 60, abs(offset) % 60)
    }

    /// Whether stderr is the journal stream systemd connected: `$JOURNAL_STREAM`
    /// holds its device and inode ("DEV:INO"), which must be stderr's own (a
    /// child whose stderr was redirected inherits the variable, not the stream).
    static func stderrIsJournal(environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard let value = environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(STDERR_FILENO, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// Makes every `Logger` of the process write through this handler.
    static func bootstrap(level: Logger.Level) {
        let timestamps = !stderrIsJournal()
        LoggingSystem.bootstrap { _ in JournalLogHandler(level: level, timestamps: timestamps) }
    }
}

/// Whole lines on stderr: one write(2) per line, under a lock, so that lines
/// of two threads never interleave.
enum StandardError {
    private static let lock = Mutex(())

    static func write(_ line: String) {
        var bytes = Array(line.utf8)
        lock.withLock { _ in
            var done = 0
            while done < bytes.count {
                let n = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress! + done, $0.count - done) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }   // stderr is gone: nothing left to tell
                done += n
            }
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

/// The daemon's earlier plain log line, kept for code that has not moved to
/// `logger` yet: the message is logged at `info` without metadata. New code
/// uses `logger` with metadata.
func log(_ message: String) {
    logger.info("\(message)")
}

extension Job {
    /// What every line about this job carries.
    var logMetadata: Logger.Metadata {
        var m: Logger.Metadata = ["job": "\(id)", "device": "\(work.device)", "image": "\(work.image)", "sync": "\(work.sync)"]
        if let bitmap = work.bitmap { m["bitmap"] = "\(bitmap)" }
        if let catalogID { m["backup"] = "\(catalogID)" }
        return m
    }

    func logStart() {
        logger.info("job '\(id)' started: \(work.sync) backup of \(work.device) to \(work.image)", metadata: logMetadata)
    }

    /// A failed backup is an error in the journal; a cancelled one a notice.
    func logEnd(succeeded: Bool) {
        if succeeded {
            var m = logMetadata
            let s = work.summary.map { $0["backup"] ?? $0 }
            if let read = s?["bytes_read"]?.intValue { m["bytes-read"] = "\(read)" }
            if let written = s?["bytes_written"]?.intValue { m["bytes-written"] = "\(written)" }
            logger.info("job '\(id)' completed: \(work.image)", metadata: m)
        } else if let errorMessage {
            logger.error("job '\(id)' failed: \(errorMessage)", metadata: logMetadata)
        } else {
            logger.notice("job '\(id)' cancelled", metadata: logMetadata)
        }
    }
}
