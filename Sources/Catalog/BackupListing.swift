import Foundation

/// The text `ringback list` and `ringback show` print from backup records:
/// pure functions of the records, the current time and a time zone, so that
/// they can be tested without a daemon.
public enum BackupListing {
    /// The records without failed or cancelled backups that a later restorable
    /// backup of the same device has superseded: what `ringback list` shows
    /// without `--all`. Running backups, complete ones, and failures not yet
    /// followed by a good backup always stay, so a device whose last attempt
    /// failed still shows that failure. Order is kept.
    public static func hidingSupersededFailures(_ records: [BackupRecord]) -> [BackupRecord] {
        var restorableLater: Set<String> = []
        var keep = [Bool](repeating: true, count: records.count)
        for i in records.indices.reversed() {
            let r = records[i]
            if (r.status == .failed || r.status == .cancelled) && restorableLater.contains(r.device) {
                keep[i] = false
            }
            if r.restorable { restorableLater.insert(r.device) }
        }
        return records.indices.filter { keep[$0] }.map { records[$0] }
    }

    /// The records without backups that chain maintenance retired (merged or
    /// removed): they are history, no longer restore points. Order is kept.
    public static func hidingRetired(_ records: [BackupRecord]) -> [BackupRecord] {
        records.filter { $0.status != .merged && $0.status != .removed }
    }

    /// What `ringback list` shows without `--all`: neither superseded
    /// failures nor retired backups.
    public static func defaultView(_ records: [BackupRecord]) -> [BackupRecord] {
        hidingRetired(hidingSupersededFailures(records))
    }

    /// A table with one line per backup (id, device, kind, status, restorable,
    /// consistency, started, duration, size, image), followed by a note for
    /// each backup that cannot be restored saying why. "no backups" when empty.
    public static func table(_ records: [BackupRecord], now: Date = Date(), timeZone: TimeZone = .current) -> String {
        guard !records.isEmpty else { return "no backups\n" }
        let header = ["ID", "DEVICE", "KIND", "STATUS", "RESTORABLE", "CONSISTENCY", "STARTED", "DURATION", "SIZE", "IMAGE"]
        let rows = records.map { r in
            [r.id, r.device, r.kind.rawValue, r.status.rawValue, r.restorable ? "yes" : "NO", r.consistency.rawValue,
             time(r.startedAt, timeZone, withZone: false), elapsed(r, now: now),
             r.imageSize.map(bytes) ?? "-", r.image]
        }
        var widths = header.map(\.count)
        for row in rows {
            for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            // The image is the last column and is never padded.
            cells.enumerated().map { i, cell in
                i == cells.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        var out = ([header] + rows).map(line).joined(separator: "\n") + "\n"
        let unrestorable = records.filter { !$0.restorable }
        if !unrestorable.isEmpty {
            let idWidth = unrestorable.map(\.id.count).max()!
            out += "\n\(unrestorable.count) of \(records.count) not restorable:\n"
            for r in unrestorable {
                out += "  " + r.id.padding(toLength: idWidth, withPad: " ", startingAt: 0) + "  " + reason(r) + "\n"
            }
        }
        return out
    }

    /// Every field of one record, one `name: value` line each, "-" for what is absent.
    public static func details(_ r: BackupRecord, now: Date = Date(), timeZone: TimeZone = .current) -> String {
        var fields: [(String, String)] = [
            ("id", r.id),
            ("job id", r.jobID ?? "-"),
            ("device", r.device),
            ("kind", r.kind.rawValue),
            ("sync", r.sync.rawValue),
            ("bitmap", r.bitmap ?? "-"),
            ("status", r.status.rawValue),
            ("error", r.error ?? "-"),
            ("restorable", r.restorable ? "yes" : "no: " + reason(r)),
            ("consistency", r.consistency.rawValue),
            ("started", time(r.startedAt, timeZone, withZone: true)),
            ("finished", r.finishedAt.map { time($0, timeZone, withZone: true) } ?? "-"),
            ("duration", elapsed(r, now: now)),
            ("chain", r.chain.map { dir in r.chainID.map { "\(dir) (chain \($0))" } ?? dir } ?? "-"),
            ("parent", r.parentID ?? "-"),
            ("image", r.image),
            ("format", r.format),
            ("image size", r.imageSize.map(bytesExact) ?? "-"),
            ("image digest", r.imageDigest ?? "-"),
            ("bytes read", r.bytesRead.map(bytesExact) ?? "-"),
            ("bytes written", r.bytesWritten.map(bytesExact) ?? "-"),
        ]
        // What chain maintenance did, only for the backups it retired.
        if let retired = r.retiredAt {
            let at = fields.firstIndex { $0.0 == "image" }!
            fields.insert(contentsOf: [("retired", time(retired, timeZone, withZone: true)),
                                       ("merged into", r.mergedInto ?? "-")], at: at)
        }
        let width = fields.map(\.0.count).max()! + 1
        return fields.map { name, value in (name + ":").padding(toLength: width, withPad: " ", startingAt: 0) + " " + value }
            .joined(separator: "\n") + "\n"
    }

    /// Why `r` cannot be restored, with the backup's own error when it has one.
    static func reason(_ r: BackupRecord) -> String {
        let why = r.notRestorableReason ?? "restorable"
        guard let error = r.error, r.status != .complete else { return why }
        return "\(why): \(error)"
    }

    /// The duration of a finished backup, or the time a running one has taken so far.
    static func elapsed(_ r: BackupRecord, now: Date) -> String {
        if let d = r.duration { return duration(d) }
        guard r.status == .running else { return "-" }
        return duration(max(0, now.timeIntervalSince(r.startedAt))) + " so far"
    }

    /// `0.4s`, `12.0s`, `2m05s`, `1h02m03s`, `3d04h05m`.
    public static func duration(_ seconds: TimeInterval) -> String {
        if seconds < 60 { return String(format: "%.1fs", seconds) }
        let s = Int(seconds.rounded(.down))
        if s < 3600 { return String(format: "%dm%02ds", s / 60, s % 60) }
        if s < 86400 { return String(format: "%dh%02dm%02ds", s / 3600, s / 60 % 60, s % 60) }
        return String(format: "%dd%02dh%02dm", s / 86400, s / 3600 % 24, s / 60 % 60)
    }

    /// `512 B`, `1.5 KiB`, `64.0 MiB`: binary units with one decimal.
    public static func bytes(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n), i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
    }

    /// `64.0 MiB (67108864 bytes)`: the rounded and the exact figure.
    static func bytesExact(_ n: UInt64) -> String { n < 1024 ? "\(n) B" : "\(bytes(n)) (\(n) bytes)" }

    /// `2025-06-01 02:00:00` in `timeZone`, with its offset (`+02:00`, or `Z`) when asked.
    static func time(_ date: Date, _ timeZone: TimeZone, withZone: Bool) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = timeZone
        f.dateFormat = withZone ? "yyyy-MM-dd HH:mm:ss.SSS XXXXX" : "yyyy-MM-dd HH:mm:ss"
        return f.string(from: date)
    }
}
