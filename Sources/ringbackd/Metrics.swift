import BlockIO
import Foundation
import Jobs
import Metrics
import Prometheus
import Quiesce
import Synchronization

/// ringbackd's Prometheus metrics (README "Metrics and logs"). Everything is
/// recorded through swift-metrics into one `PrometheusCollectorRegistry`.
/// Counters of things that happen (bytes copied, freezes) are recorded where
/// they happen; gauges and counters that mirror the daemon's state (jobs per
/// status, dirty bytes, tracker figures, throughput) are set from that state
/// right before each export, so they can never drift from it.
enum MetricName {
    static let bytesCopied = "ringback_bytes_copied_total"
    static let throughput = "ringback_copy_throughput_bytes_per_second"
    static let jobs = "ringback_jobs"
    static let dirtyBytes = "ringback_bitmap_dirty_bytes"
    static let bitmapInconsistent = "ringback_bitmap_inconsistent"
    static let trackerEvents = "ringback_tracker_events_total"
    static let trackerDropped = "ringback_tracker_dropped_events_total"
    static let freezeDuration = "ringback_freeze_duration_seconds"
    static let freezeExpired = "ringback_freeze_expired_total"
    // Recorded by the plan runner.
    static let planLastSuccess = "ringback_plan_last_success_timestamp_seconds"
    static let planLastDuration = "ringback_plan_last_duration_seconds"
    static let planRuns = "ringback_plan_runs_total"

    /// The `# HELP` text of every metric. swift-metrics has no place for it,
    /// so the exporter adds these lines to the registry's output.
    static let help: [String: String] = [
        bytesCopied: "Bytes read from the device by backup jobs (failed and cancelled ones included).",
        throughput: "Read rate of a running backup job over the last 10 s (or since it started).",
        jobs: "Jobs ringbackd holds, by status (QEMU job states).",
        dirtyBytes: "Dirty bytes of the bitmap: what an incremental backup from it would copy (query-block count).",
        bitmapInconsistent: "1 when the bitmap may have missed writes and an incremental from it needs --rescan.",
        trackerEvents: "Completed writes, discards and write-zeroes the tracker recorded for the device.",
        trackerDropped: "Block events the tracefs instance of the device's disk lost (dropped or overrun).",
        freezeDuration: "How long filesystems stayed frozen for a transaction or a frozen backup.",
        freezeExpired: "Freezes the watchdog ended because ringbackd went silent for the freeze timeout.",
        planLastSuccess: "When the plan last succeeded (Unix time).",
        planLastDuration: "How long the plan's last run took.",
        planRuns: "Runs of the plan, by result.",
    ]

    /// Freeze durations: from a quick transaction (ms) to a frozen copy (minutes).
    static let freezeBuckets: [Duration] = [
        .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300),
        .seconds(900),
    ]
}

/// The registry and the series that mirror the daemon's state.
final class DaemonMetrics: @unchecked Sendable {
    static let shared = DaemonMetrics()
    let registry = PrometheusCollectorRegistry()
    /// Serialises refresh-and-emit: two exporters (HTTP and textfile) never
    /// interleave their refreshes.
    private let lock = NSLock()
    private var bootstrapped = false
    private var jobGauges: [JobStatus: Metrics.Gauge] = [:]
    // Mirrored series by their label values; a series whose bitmap, device or
    // job went away is destroyed, so it leaves the exposition.
    private var dirty: [[String]: Metrics.Gauge] = [:]
    private var inconsistent: [[String]: Metrics.Gauge] = [:]
    private var events: [String: MirroredCounter] = [:]
    private var dropped: [String: MirroredCounter] = [:]
    private var throughput: [[String]: Metrics.Gauge] = [:]
    private var copiedSeen: Set<String> = []
    /// How long an export waits for a transaction that holds the daemon's
    /// locks (hooks may run for a minute) before it shows the last figures.
    var lockPatience: TimeInterval = 1

    /// The statuses a job can be seen in (`undefined` is before its creation,
    /// `null` after its dismissal).
    static let jobStatuses = JobStatus.allCases.filter { $0 != .undefined && $0 != .null }

    /// Makes swift-metrics record into the registry (once per process).
    func bootstrap() {
        lock.withLock {
            guard !bootstrapped else { return }
            bootstrapped = true
            var factory = PrometheusMetricsFactory(registry: registry)
            factory.durationHistogramBuckets[MetricName.freezeDuration] = MetricName.freezeBuckets
            MetricsSystem.bootstrap(factory)
            // Series that exist from the start, so that the first event is an
            // increase and not the series' appearance.
            for status in Self.jobStatuses {
                jobGauges[status] = Metrics.Gauge(label: MetricName.jobs, dimensions: [("status", status.rawValue)])
                jobGauges[status]?.record(0)
            }
            _ = Metrics.Timer(label: MetricName.freezeDuration)
            _ = Metrics.Counter(label: MetricName.freezeExpired)
        }
    }

    /// A freeze ended after `seconds`; `expired` when the watchdog ended it.
    static func freezeEnded(seconds: Double, expired: Bool) {
        Metrics.Timer(label: MetricName.freezeDuration).recordSeconds(max(0, seconds))
        if expired { Metrics.Counter(label: MetricName.freezeExpired).increment() }
    }

    /// Refreshes the mirrored series from `daemon` and returns the whole
    /// exposition (text format 0.0.4), HELP lines included.
    func exposition(of daemon: Daemon?) -> String {
        lock.withLock {
            if let daemon { refresh(from: daemon) }
            return Self.withHelp(registry.emitToString())
        }
    }

    // MARK: refresh

    private func refresh(from daemon: Daemon) {
        let deadline = Date().addingTimeInterval(lockPatience)
        if let jobs = daemon.jobs.locked(before: deadline, {
            daemon.jobs.all.map { (status: $0.status, copying: $0.copying, id: $0.id, meter: $0.meter) }
        }) {
            refreshJobs(jobs)
        }
        if let devices = daemon.trackedSnapshot(before: deadline) {
            refreshDevices(devices)
        }
    }

    private func refreshJobs(_ jobs: [(status: JobStatus, copying: Bool, id: String, meter: CopyMeter)]) {
        var perStatus: [JobStatus: Int] = [:]
        for j in jobs { perStatus[j.status, default: 0] += 1 }
        for (status, gauge) in jobGauges { gauge.record(perStatus[status] ?? 0) }

        let now = monotonicNow()
        var live: [[String]: Metrics.Gauge] = [:]
        for j in jobs where j.copying {
            let key = [j.id, j.meter.device]
            let gauge = throughput[key] ?? Metrics.Gauge(label: MetricName.throughput, dimensions: [("job", j.id), ("device", j.meter.device)])
            gauge.record(j.meter.rate(now: now))
            live[key] = gauge
        }
        for (key, gauge) in throughput where live[key] == nil { gauge.destroy() }
        throughput = live
    }

    private func refreshDevices(_ snapshot: TrackedSnapshot) {
        var liveDirty: [[String]: Metrics.Gauge] = [:], liveInconsistent: [[String]: Metrics.Gauge] = [:]
        var liveEvents: [String: MirroredCounter] = [:], liveDropped: [String: MirroredCounter] = [:]
        for device in snapshot.devices {
            for b in device.bitmaps {
                let key = [device.path, b.name]
                let dims = [("device", device.path), ("bitmap", b.name)]
                let d = dirty[key] ?? Metrics.Gauge(label: MetricName.dirtyBytes, dimensions: dims)
                d.record(b.count)
                liveDirty[key] = d
                let i = inconsistent[key] ?? Metrics.Gauge(label: MetricName.bitmapInconsistent, dimensions: dims)
                i.record(b.inconsistent ? 1 : 0)
                liveInconsistent[key] = i
            }
            let e = events[device.path] ?? MirroredCounter(MetricName.trackerEvents, device: device.path)
            e.set(device.events)
            liveEvents[device.path] = e
            // A loss counter that cannot be read now (the instance is being
            // removed) keeps its last value.
            if let lost = snapshot.lossCounts[device.disk] ?? dropped[device.path]?.last {
                let d = dropped[device.path] ?? MirroredCounter(MetricName.trackerDropped, device: device.path)
                d.set(lost)
                liveDropped[device.path] = d
            }
            if !copiedSeen.contains(device.path) {
                // Zero from the start of tracking, so a rate() sees the first backup.
                _ = Metrics.Counter(label: MetricName.bytesCopied, dimensions: [("device", device.path)])
                copiedSeen.insert(device.path)
            }
        }
        for (key, g) in dirty where liveDirty[key] == nil { g.destroy() }
        for (key, g) in inconsistent where liveInconsistent[key] == nil { g.destroy() }
        for (key, c) in events where liveEvents[key] == nil { c.destroy() }
        for (key, c) in dropped where liveDropped[key] == nil { c.destroy() }
        (dirty, inconsistent, events, dropped) = (liveDirty, liveInconsistent, liveEvents, liveDropped)
    }

    // MARK: HELP lines

    /// The registry's text with the families sorted by name and a `# HELP`
    /// line before each family's `# TYPE` line; the series of a counter or
    /// gauge sorted too (a histogram's lines keep their order), so that two
    /// exports of the same state read the same.
    static func withHelp(_ text: String) -> String {
        var families: [(name: String, lines: [Substring])] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("# TYPE ") {
                let name = line.dropFirst("# TYPE ".count).prefix { $0 != " " }
                families.append((String(name), [line]))
            } else if !families.isEmpty {
                families[families.count - 1].lines.append(line)
            }
        }
        var out = ""
        for family in families.sorted(by: { $0.name < $1.name }) {
            if let help = MetricName.help[family.name] {
                out += "# HELP \(family.name) \(help.replacingOccurrences(of: "\\", with: "\\\\"))\n"
            }
            let sorted = family.lines.first?.hasSuffix(" histogram") == true
                ? family.lines : [family.lines[0]] + family.lines.dropFirst().sorted()
            for line in sorted { out += line + "\n" }
        }
        return out
    }
}

/// A Prometheus counter that mirrors a total kept elsewhere (the daemon's
/// event count, the kernel's loss counters): it goes up by the difference, and
/// resets when the total went back (a new tracefs instance).
final class MirroredCounter {
    private let counter: Metrics.Counter
    private(set) var last: UInt64 = 0

    init(_ name: String, device: String) {
        counter = Metrics.Counter(label: name, dimensions: [("device", device)])
    }

    func set(_ total: UInt64) {
        if total < last {
            counter.reset()
            last = 0
        }
        if total > last { counter.increment(by: Int64(clamping: total - last)) }
        last = total
    }

    func destroy() { counter.destroy() }
}

/// What one job's copy has read: it feeds the device's bytes-copied counter
/// as each read completes, and the job's throughput gauge from its samples.
final class CopyMeter: Sendable {
    let device: String
    private let counter: Metrics.Counter
    private let total = Atomic<UInt64>(0)
    /// (monotonic time, bytes) at each export, trimmed to the window.
    private let samples: Mutex<[(time: Double, bytes: UInt64)]>
    static let window = 10.0

    init(device: String) {
        self.device = device
        counter = Metrics.Counter(label: MetricName.bytesCopied, dimensions: [("device", device)])
        samples = Mutex([(monotonicNow(), 0)])
    }

    /// The engine read `bytes` more (CopyControl's `onRead`).
    @Sendable func record(_ bytes: UInt64) {
        total.add(bytes, ordering: .relaxed)
        counter.increment(by: Int64(clamping: bytes))
    }

    /// Bytes per second since the newest sample at least `window` old (or
    /// the job's creation, when none is that old).
    func rate(now: Double) -> Double {
        let bytes = total.load(ordering: .relaxed)
        return samples.withLock { s in
            s.append((now, bytes))
            while s.count > 2 && now - s[1].time >= Self.window { s.removeFirst() }
            let base = s[0]
            return now > base.time ? Double(bytes - base.bytes) / (now - base.time) : 0
        }
    }
}

/// The daemon's tracked devices as the metrics need them, taken under its lock.
struct TrackedSnapshot {
    struct Device {
        var path: String
        var disk: String
        var events: UInt64
        var bitmaps: [(name: String, count: UInt64, inconsistent: Bool)]
    }
    var devices: [Device]
    /// Each disk's tracefs loss counters now; a disk whose counters could not
    /// be read is missing.
    var lossCounts: [String: UInt64]
}

extension Daemon {
    /// The tracked devices, or nil when the daemon's lock stays taken past
    /// `deadline`. The loss counters are read after the lock is given back.
    func trackedSnapshot(before deadline: Date) -> TrackedSnapshot? {
        guard let (devices, trackers) = withTrackedDevices(before: deadline, { nodes, trackers in
            (nodes.map { n in
                TrackedSnapshot.Device(path: n.path, disk: n.disk, events: n.writeEvents,
                                       bitmaps: n.bitmaps.bitmaps.map { ($0.name, $0.count, $0.isInconsistent) })
            }, trackers)
        }) else { return nil }
        var losses: [String: UInt64] = [:]
        for (disk, tracker) in trackers {
            if let n = try? tracker.currentLossCount() { losses[disk] = n }
        }
        return TrackedSnapshot(devices: devices, lossCounts: losses)
    }
}

extension Daemon {
    /// A freeze ended: its duration goes to the histogram and the log; one
    /// the watchdog ended is a warning (the transaction or copy fails).
    func thawed(_ section: QuiescedSection, _ thaw: FreezeHold.Thaw) {
        let mounts = section.hold.plan.mountPoints.joined(separator: " ")
        let devices = section.devices.joined(separator: " ")
        switch thaw {
        case .requested(let seconds):
            DaemonMetrics.freezeEnded(seconds: seconds, expired: false)
            logger.info("thawed \(mounts) after \(String(format: "%.3f", seconds)) s",
                        metadata: ["devices": "\(devices)", "mount-points": "\(mounts)"])
        case .expired(let seconds):
            DaemonMetrics.freezeEnded(seconds: seconds, expired: true)
            logger.warning("the watchdog thawed \(mounts) after \(String(format: "%.3f", seconds)) s: ringbackd gave no sign for the freeze timeout",
                           metadata: ["devices": "\(devices)", "mount-points": "\(mounts)"])
        }
    }
}
