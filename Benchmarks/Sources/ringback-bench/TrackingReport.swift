import Foundation

/// Everything one run of the tracking suite measured, as written to
/// results/tracking.json.
struct TrackingResults: Codable {
    var date: String
    var kernel: String
    var cpus: Int
    var ringback: String
    var ringbackd: String
    var cachesDropped: Bool
    var iops: IOPSResults?
    var incremental: IncrementalResults?
    var ratios: [TrackingRatio] = []
    /// Whether ringbackd exited on SIGTERM (false: it had to be killed).
    var daemonStoppedBySigterm: Bool?
    /// What went wrong or did not check out; empty on a clean run.
    var problems: [String] = []
}

/// (a) fio 4k random-write IOPS with write tracking off and on.
struct IOPSResults: Codable {
    /// The fio command line, with DEV for the device.
    var command: String
    var runtimeSeconds: Int
    var warmupSeconds: Int
    /// Runs with tracking off, and as many with it on.
    var runsEach: Int
    var setups: [IOPSSetup]
}

struct IOPSSetup: Codable {
    var setup: String
    var description: String
    var device: String
    var backingFile: String
    var directIO: Bool
    var sizeBytes: UInt64
    /// In the order they ran.
    var runs: [IOPSRun] = []
    var medianOff: Double?
    var medianOn: Double?
    var error: String?

    var off: [Double] { runs.filter { !$0.tracking }.map(\.iops) }
    var on: [Double] { runs.filter(\.tracking).map(\.iops) }
}

struct IOPSRun: Codable {
    var tracking: Bool
    var iops: Double
    /// ringbackd's CPU time over the run's wall clock, in % of one CPU.
    var daemonCpuPercent: Double?
    /// The bitmap's count after the run (tracking on).
    var bitmapCountBytes: UInt64?
    /// Whether the tracker lost events during the run (tracking on).
    var inconsistent: Bool?
}

/// (b) the same change backed up from the bitmap and by --rescan, and a
/// full backup of the device.
struct IncrementalResults: Codable {
    var device: String
    var backingFile: String
    var directIO: Bool
    var targetDirectory: String
    var sizeBytes: UInt64
    var clusterSize: Int
    var clusters: Int
    var dirtyClustersPerRound: Int
    var rounds: [IncrementalRound] = []
    var medianWallSeconds: [String: Double] = [:]
    var medianReportedSeconds: [String: Double] = [:]
    var error: String?
}

struct IncrementalRound: Codable {
    var round: Int
    /// Which of the two incrementals ran first.
    var order: [String] = []
    /// Each bitmap's count before the backups (bytes).
    var bitmapCounts: [String: UInt64] = [:]
    var incremental: BackupTiming?
    var rescan: BackupTiming?
    var full: BackupTiming?
    /// `qemu-img compare` of both new images against the device.
    var identical: Bool?
}

struct BackupTiming: Codable {
    /// Launch to exit of `ringback backup`, which waits for the daemon's reply.
    var wallSeconds: Double
    /// The copy alone, as the daemon reports it.
    var reportedSeconds: Double?
    var bytesRead: UInt64?
    var bytesWritten: UInt64?
    var unchangedBytes: UInt64?
    var mode: String?
    var image: String?
}

struct TrackingRatio: Codable {
    var ratio: String
    /// "median IOPS", "wall" or "reported".
    var clock: String
    var value: Double?
    /// "≥ 0.97", "≤ 0.03", "≥ 25".
    var target: String?
    /// "PASS" or "SHORT".
    var status: String?
}

/// The kinds of backup in (b), as keys of the medians.
enum BackupKind: String, CaseIterable {
    case incremental, rescan, full

    var label: String {
        switch self {
        case .incremental: "incremental from the bitmap"
        case .rescan: "incremental --rescan"
        case .full: "full backup"
        }
    }
}

extension TrackingResults {
    /// The ratios of issue 3, item 7, from the medians.
    mutating func computeRatios() {
        ratios = []
        func ratio(_ name: String, _ clock: String, _ value: Double?, atLeast: Double? = nil, atMost: Double? = nil) {
            var r = TrackingRatio(ratio: name, clock: clock, value: value)
            if let atLeast {
                r.target = "≥ \(format(atLeast))"
                if let value { r.status = value >= atLeast ? "PASS" : "SHORT" }
            }
            if let atMost {
                r.target = "≤ \(format(atMost))"
                if let value { r.status = value <= atMost ? "PASS" : "SHORT" }
            }
            ratios.append(r)
        }
        for setup in iops?.setups ?? [] {
            var value: Double?
            if let on = setup.medianOn, let off = setup.medianOff, off > 0 { value = on / off }
            ratio("tracking on / off IOPS (\(setup.setup))", "median IOPS", value, atLeast: 0.97)
        }
        if let inc = incremental {
            for (clock, medians) in [("wall", inc.medianWallSeconds), ("reported", inc.medianReportedSeconds)] {
                func over(_ a: BackupKind, _ b: BackupKind) -> Double? {
                    guard let x = medians[a.rawValue], let y = medians[b.rawValue], y > 0 else { return nil }
                    return x / y
                }
                ratio("incremental / full (time)", clock, over(.incremental, .full), atMost: 0.03)
                ratio("rescan / incremental (time)", clock, over(.rescan, .incremental), atLeast: 25)
            }
        }
    }

    /// What was measured, as a table for a terminal.
    func table() -> String {
        var lines: [String] = []
        lines.append("")
        lines.append("ringback-bench tracking: kernel \(kernel), \(cpus) CPUs"
            + (cachesDropped ? "" : "; page cache NOT dropped (the kernel refused)"))
        lines.append("  ringback  \(ringback)")
        lines.append("  ringbackd \(ringbackd)")

        if let iops {
            lines.append("")
            lines.append("(a) write-tracking cost: fio randwrite bs=4k iodepth=32 io_uring direct=1, \(iops.runtimeSeconds) s a run, "
                + "\(iops.runsEach) off / \(iops.runsEach) on alternating"
                + (iops.warmupSeconds > 0 ? " after a \(iops.warmupSeconds) s warm-up" : ""))
            lines.append("    off: device not tracked (ringbackd idle); on: ringbackd tracking it with one 64 KiB bitmap")
            lines.append(pad("median IOPS (min-max)", 40) + pad("tracking off", 26) + pad("tracking on", 26) + "on/off")
            for s in iops.setups {
                var row = pad("(\(s.setup)) \(s.description)", 40)
                row += pad(summary(s.off, "%.0f"), 26) + pad(summary(s.on, "%.0f"), 26)
                if let on = s.medianOn, let off = s.medianOff, off > 0 { row += String(format: "%.3f", on / off) }
                if let error = s.error { row += "  (failed: \(error))" }
                lines.append(row)
                let onRuns = s.runs.filter(\.tracking)
                if !onRuns.isEmpty {
                    let cpu = onRuns.compactMap(\.daemonCpuPercent)
                    let lost = onRuns.filter { $0.inconsistent != false }.count
                    let offCPU = s.runs.filter { !$0.tracking }.compactMap(\.daemonCpuPercent)
                    lines.append("      \(s.device) \(s.directIO ? "(direct I/O) " : "")\(s.sizeBytes >> 20) MiB; ringbackd CPU "
                        + "on \(summary(cpu, "%.1f"))%, off \(summary(offCPU, "%.1f"))% of one CPU; runs that lost events: \(lost) of \(onRuns.count)")
                }
            }
        }

        if let inc = incremental {
            lines.append("")
            let pct = Double(inc.dirtyClustersPerRound) / Double(max(inc.clusters, 1)) * 100
            lines.append("(b) incremental cost: \(inc.sizeBytes >> 20) MiB of random data on \(inc.device)"
                + (inc.directIO ? " (direct I/O)" : "") + " over \(inc.backingFile)")
            lines.append("    chains in \(inc.targetDirectory); \(inc.dirtyClustersPerRound) of \(inc.clusters) "
                + "\(inc.clusterSize >> 10) KiB clusters (\(String(format: "%.2f", pct))%) dirtied by 4 KiB O_DIRECT writes "
                + "before each of \(inc.rounds.count) round(s); page cache dropped before each timed backup "
                + "(then ringback's executable read back in)")
            lines.append("    both incrementals back up the same change onto the same previous image (a hard-linked copy of the chain)")
            lines.append(pad("seconds, median (min-max)", 40) + pad("wall clock", 26) + pad("reported (copy)", 26)
                + pad("read", 12) + "written")
            for kind in BackupKind.allCases {
                let timings = inc.rounds.compactMap { r -> BackupTiming? in
                    switch kind { case .incremental: r.incremental; case .rescan: r.rescan; case .full: r.full }
                }
                var row = pad(kind.label, 40)
                row += pad(summary(timings.map(\.wallSeconds), "%.3f"), 26)
                row += pad(summary(timings.compactMap(\.reportedSeconds), "%.3f"), 26)
                row += pad(timings.last?.bytesRead.map(bytes) ?? "-", 12)
                row += timings.last?.bytesWritten.map(bytes) ?? "-"
                lines.append(row)
            }
            let expected = UInt64(inc.dirtyClustersPerRound * inc.clusterSize)
            let counts = inc.rounds.flatMap { $0.bitmapCounts.values }
            let countsOK = !counts.isEmpty && counts.allSatisfy { $0 == expected }
            lines.append("      bitmap counts before the backups: "
                + (countsOK ? "\(bytes(expected)) (exactly the dirtied clusters) in every round"
                    : counts.map(bytes).joined(separator: ", ") + " (expected \(bytes(expected)))"))
            let compared = inc.rounds.compactMap(\.identical)
            if compared.isEmpty {
                lines.append("      images not compared with the device (--no-verify)")
            } else {
                lines.append("      qemu-img compare of both new images with the device: "
                    + (compared.allSatisfy { $0 } ? "identical in every round" : "DIFFERENT in \(compared.filter { !$0 }.count) round(s)"))
            }
            if let error = inc.error { lines.append("      failed: \(error)") }
        }

        lines.append("")
        lines.append(pad("ratio (median over median)", 40) + pad("clock", 14) + pad("value", 10) + "target")
        for r in ratios {
            lines.append(pad(r.ratio, 40) + pad(r.clock, 14) + pad(r.value.map(format) ?? "n/a", 10)
                + (r.target.map { "\($0) \(r.status ?? "")" } ?? ""))
        }
        if let daemonStoppedBySigterm, !daemonStoppedBySigterm {
            lines.append("")
            lines.append("note: ringbackd did not exit on SIGTERM and was killed with SIGKILL (its devices were untracked first)")
        }
        if !problems.isEmpty {
            lines.append("")
            lines.append("problems:")
            for p in problems { lines.append("  - \(p)") }
        }
        return lines.map { String($0.reversed().drop { $0 == " " }.reversed()) }.joined(separator: "\n")
    }

    private func summary(_ values: [Double], _ spec: String) -> String {
        guard let m = median(values), let low = values.min(), let high = values.max() else { return "-" }
        let f = { (v: Double) in String(format: spec, v) }
        return values.count > 1 ? "\(f(m)) (\(f(low))-\(f(high)))" : f(m)
    }
}

/// A ratio with three significant digits at most.
private func format(_ value: Double) -> String {
    value >= 10 ? String(format: "%.1f", value) : value >= 0.1 ? String(format: "%.3f", value) : String(format: "%.4f", value)
}

/// Bytes in binary units.
private func bytes(_ n: UInt64) -> String {
    let v = Double(n)
    if n >= 1 << 30 { return String(format: "%.2f GiB", v / Double(1 << 30)) }
    if n >= 1 << 20 { return String(format: "%.1f MiB", v / Double(1 << 20)) }
    if n >= 1 << 10 { return String(format: "%.0f KiB", v / Double(1 << 10)) }
    return "\(n) B"
}

private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}
