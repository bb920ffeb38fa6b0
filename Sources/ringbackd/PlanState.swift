import BlockIO
import Config
import ControlProtocol
import Foundation
import Metrics

/// What ringbackd remembers of a plan across restarts, in
/// `<state-dir>/plans.json`: when it was first seen (an interval plan's first
/// run is one interval later), its last run and how that ended, and which
/// devices have a bitmap the plan made but no backup has synced yet.
struct PlanRecord: Codable, Equatable {
    var firstSeen: Date
    var lastRun: Date?
    /// "success", "failed" or "running".
    var lastResult: String?
    var lastError: String?
    /// Something that went wrong after the backups succeeded (retention).
    var lastWarning: String?
    /// Seconds the last run took.
    var lastDuration: Double?
    var lastSuccess: Date?
    var lastSuccessDuration: Double?
    var lastBackups: [PlanBackup]?
    /// Device ids whose plan bitmap was made by a run whose full backup has not
    /// completed yet: such a bitmap started after the chain's newest image, so
    /// an incremental from it would miss writes. The next run takes a full.
    var unsyncedBitmaps: [String]?

    init(firstSeen: Date) { self.firstSeen = firstSeen }

    enum CodingKeys: String, CodingKey {
        case firstSeen = "first-seen", lastRun = "last-run", lastResult = "last-result", lastError = "last-error"
        case lastWarning = "last-warning", lastDuration = "last-duration", lastSuccess = "last-success"
        case lastSuccessDuration = "last-success-duration", lastBackups = "last-backups"
        case unsyncedBitmaps = "unsynced-bitmaps"
    }
}

/// One backup a plan run made (or tried to make).
struct PlanBackup: Codable, Equatable {
    var device: String
    var kind: String
    /// nil when the run failed: nothing was kept.
    var image: String?
    /// Why a full backup was taken.
    var reason: String?

    var json: JSONValue {
        var o: [String: JSONValue] = ["device": .string(device), "kind": .string(kind)]
        if let image { o["image"] = .string(image) }
        if let reason { o["reason"] = .string(reason) }
        return .object(o)
    }
}

/// `<state-dir>/plans.json`, written atomically (temporary file, fsync,
/// rename, fsync of the folder) so a crash leaves the old or the new file.
struct PlanStateFile {
    let path: String

    struct Contents: Codable {
        var plans: [String: PlanRecord]
    }

    /// The saved records; a missing file is none, an unreadable one is logged
    /// and set aside (as plans.json.bad) so the daemon still starts.
    func load(log: (String) -> Void) -> [String: PlanRecord] {
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        do {
            return try decoder.decode(Contents.self, from: data).plans
        } catch {
            log("cannot read \(path) (\(error)); the plans' last runs are forgotten and the file is kept as \(path).bad")
            rename(path, path + ".bad")
            return [:]
        }
    }

    func save(_ records: [String: PlanRecord]) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let data = try encoder.encode(Contents(plans: records))
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError(errno: errno, "create \(tmp)") }
        let written = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let ok = written == data.count && fsync(fd) == 0
        let e = errno
        close(fd)
        guard ok else { unlink(tmp); throw SystemError(errno: e, "write \(tmp)") }
        guard rename(tmp, path) == 0 else { throw SystemError(errno: errno, "rename \(tmp) to \(path)") }
        let dir = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { fsync(dir); close(dir) }
    }
}

/// The three plan metrics (names fixed by the metrics contract). Handlers are
/// looked up at each recording, so that metrics recorded before the metrics
/// system is bootstrapped are not bound to the no-op backend for ever.
enum PlanMetrics {
    static func runFinished(plan: String, succeeded: Bool, duration: Double, finishedAt: Date) {
        Counter(label: "ringback_plan_runs_total", dimensions: [("plan", plan), ("result", succeeded ? "success" : "failed")])
            .increment()
        if succeeded { lastSuccess(plan: plan, at: finishedAt, duration: duration) }
    }

    /// The last success's time and duration (also re-published at start from plans.json).
    static func lastSuccess(plan: String, at date: Date, duration: Double) {
        Gauge(label: "ringback_plan_last_success_timestamp_seconds", dimensions: [("plan", plan)])
            .record(date.timeIntervalSince1970)
        Gauge(label: "ringback_plan_last_duration_seconds", dimensions: [("plan", plan)]).record(duration)
    }
}
