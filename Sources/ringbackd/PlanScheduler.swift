import Config
import ControlProtocol
import Foundation

/// Runs the configuration's backup plans on their schedules: one scheduler
/// thread that sleeps until the next plan is due, one thread per running
/// plan, never two runs of one plan at once. Holds the loaded configuration
/// (replaced on SIGHUP only by a good one) and each plan's last run, saved in
/// `<state-dir>/plans.json` so that a restart neither forgets them nor runs
/// every plan at once.
final class PlanScheduler: PlanRunHost, @unchecked Sendable {
    unowned let daemon: Daemon
    let configPath: String
    /// Given with --config: a missing file is then an error, not "no plans".
    let configExplicit: Bool
    private let stateFile: PlanStateFile
    /// Guards everything below; the scheduler thread waits on it.
    private let condition = NSCondition()
    private var config: RingbackConfig
    /// The last load's problems, while the configuration before it runs.
    private var configError: String?
    private var loadedAt: Date?
    private var records: [String: PlanRecord] = [:]
    /// Plans running now, with their start.
    private var running: [String: Date] = [:]
    /// Runs that have not yet returned from their transaction.
    private var preparing = 0
    private var stopping = false
    private var schedulerRunning = false

    init(daemon: Daemon, configPath: String?) {
        self.daemon = daemon
        self.configPath = configPath ?? RingbackConfig.defaultPath
        configExplicit = configPath != nil
        stateFile = PlanStateFile(path: daemon.state.root + "/plans.json")
        config = RingbackConfig(file: self.configPath)
    }

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        condition.lock()
        defer { condition.unlock() }
        return try body()
    }

    /// The configuration in force: the [daemon] and [metrics] settings, and the plans.
    var configuration: RingbackConfig { locked { config } }

    // MARK: configuration

    /// Reads the configuration file: a missing file at the default path is no
    /// plans; a missing file named by --config, or any other failure to read, is an error.
    private func readConfig() throws -> RingbackConfig {
        do {
            return try RingbackConfig.load(path: configPath)
        } catch let e as ConfigFileError where e.missing && !configExplicit {
            return RingbackConfig(file: configPath)
        }
    }

    /// At start: a file named by --config must exist; a file with mistakes is
    /// logged and reported by `x-query-plans`, and the daemon runs no plan
    /// (rather than refusing to start: its trackers must keep recording).
    func load() throws {
        let fresh: RingbackConfig
        var problem: Error?
        do {
            fresh = try readConfig()
        } catch let e as ConfigFileError where configExplicit {
            throw e
        } catch {
            problem = error
            fresh = RingbackConfig(file: configPath)
        }
        locked {
            records = stateFile.load(log: { log($0) })
            for (name, var r) in records where r.lastResult == "running" {
                r.lastResult = "failed"
                r.lastError = "interrupted: ringbackd stopped before the run finished"
                records[name] = r
            }
            for (name, r) in records {
                if let at = r.lastSuccess { PlanMetrics.lastSuccess(plan: name, at: at, duration: r.lastSuccessDuration ?? 0) }
            }
            install(fresh, at: Date())
        }
        if let problem {
            report(problem, keeping: "no plans")
        } else if FileManager.default.fileExists(atPath: configPath) {
            log("config \(configPath): \(locked { describePlans() })")
        } else {
            log("no config file at \(configPath): no backup plans")
        }
    }

    /// SIGHUP: a good configuration replaces the plans (running runs finish
    /// with the plan they started with); a bad one is logged and reported, and
    /// the running configuration stays.
    func reload() {
        let fresh: RingbackConfig
        do {
            fresh = try readConfig()
        } catch {
            report(error, keeping: locked { describePlans() })
            return
        }
        locked {
            install(fresh, at: Date())
            condition.broadcast()
        }
        log("config \(configPath) reloaded: \(locked { describePlans() })")
    }

    private func report(_ error: Error, keeping: String) {
        let text = "\(error)"
        locked { configError = text }
        for line in text.split(separator: "\n") { log("config error: \(line)") }
        log("config \(configPath) not loaded; running \(keeping)")
    }

    /// Under the lock: the new plans, each with a record (a plan seen for the
    /// first time starts its interval now).
    private func install(_ fresh: RingbackConfig, at now: Date) {
        config = fresh
        configError = nil
        loadedAt = now
        for plan in fresh.plans where records[plan.name] == nil {
            records[plan.name] = PlanRecord(firstSeen: now)
        }
        saveRecords()
    }

    private func describePlans() -> String {
        config.plans.isEmpty ? "no plans"
            : "\(config.plans.count) plan\(config.plans.count == 1 ? "" : "s") (\(config.plans.map(\.name).joined(separator: ", ")))"
    }

    private func saveRecords() {
        do { try stateFile.save(records) } catch { log("cannot save \(stateFile.path): \(error)") }
    }

    // MARK: scheduling

    /// When a plan is due next: its schedule after its last run's start (or
    /// after it was first seen). A run missed while the daemon was stopped is
    /// due at once, and made up once, not once per missed time.
    private func nextRun(_ plan: BackupPlan) -> Date? {
        let r = records[plan.name]
        let now = Date()
        // A last run "in the future" (the clock was set back) counts as now.
        return plan.schedule.next(after: min(r?.lastRun ?? r?.firstSeen ?? now, now))
    }

    func start() {
        locked { schedulerRunning = true }
        let thread = Thread { [self] in loop() }
        thread.name = "ringbackd-plans"
        thread.start()
    }

    private func loop() {
        condition.lock()
        defer { schedulerRunning = false; condition.broadcast(); condition.unlock() }
        while !stopping {
            let now = Date()
            // Wake at least once a minute, so a changed wall clock is noticed.
            var wake = now.addingTimeInterval(60)
            for plan in config.plans where running[plan.name] == nil {
                guard let due = nextRun(plan) else { continue }
                if due <= now {
                    startRun(plan, at: now)
                } else {
                    wake = min(wake, due)
                }
            }
            _ = condition.wait(until: wake)
        }
    }

    /// Under the lock: records the start, then runs the plan on a thread of its own.
    private func startRun(_ plan: BackupPlan, at now: Date) {
        running[plan.name] = now
        preparing += 1
        var r = records[plan.name] ?? PlanRecord(firstSeen: now)
        r.lastRun = now
        r.lastResult = "running"
        r.lastError = nil
        r.lastWarning = nil
        r.lastDuration = nil
        records[plan.name] = r
        saveRecords()
        log("plan '\(plan.name)': run started (\(plan.devices.map(\.name).joined(separator: ", ")))")
        daemon.emit("X_PLAN_STARTED", .object(["name": .string(plan.name), "started-at": .string(CivilTime.iso8601(now))]))
        let thread = Thread { [self] in
            let outcome = PlanRun(plan: plan, daemon: daemon, host: self, started: now).execute()
            finished(plan, started: now, outcome)
        }
        thread.name = "ringbackd-plan-\(plan.name)"
        thread.start()
    }

    private func finished(_ plan: BackupPlan, started: Date, _ outcome: PlanOutcome) {
        let end = Date()
        let duration = end.timeIntervalSince(started)
        locked {
            running[plan.name] = nil
            var r = records[plan.name] ?? PlanRecord(firstSeen: started)
            r.lastResult = outcome.succeeded ? "success" : "failed"
            r.lastError = outcome.error
            r.lastWarning = outcome.warning
            r.lastDuration = duration
            r.lastBackups = outcome.backups
            if outcome.succeeded {
                r.lastSuccess = end
                r.lastSuccessDuration = duration
            }
            let unsynced = (r.unsyncedBitmaps ?? []).filter { !outcome.synced.contains($0) }
            r.unsyncedBitmaps = unsynced.isEmpty ? nil : unsynced
            records[plan.name] = r
            saveRecords()
            condition.broadcast()
        }
        PlanMetrics.runFinished(plan: plan.name, succeeded: outcome.succeeded, duration: duration, finishedAt: end)
        if outcome.succeeded {
            log("plan '\(plan.name)': run succeeded in \(String(format: "%.1f", duration)) s"
                + (outcome.warning.map { " (warning: \($0))" } ?? ""))
        } else {
            log("plan '\(plan.name)': run failed after \(String(format: "%.1f", duration)) s: \(outcome.error ?? "?")")
        }
        var data: [String: JSONValue] = [
            "name": .string(plan.name), "result": .string(outcome.succeeded ? "success" : "failed"),
            "started-at": .string(CivilTime.iso8601(started)), "duration": .double(duration),
            "backups": .array(outcome.backups.map(\.json)),
        ]
        if let e = outcome.error { data["error"] = .string(e) }
        if let w = outcome.warning { data["warning"] = .string(w) }
        daemon.emit("X_PLAN_COMPLETED", .object(data))
    }

    // MARK: PlanRunHost

    func mayStartTransaction() -> Bool { locked { !stopping } }

    func transactionReturned() {
        locked {
            preparing -= 1
            condition.broadcast()
        }
    }

    func isUnsynced(plan: String, device: String) -> Bool {
        locked { records[plan]?.unsyncedBitmaps?.contains(device) == true }
    }

    func markUnsynced(plan: String, device: String) throws {
        try locked {
            var r = records[plan] ?? PlanRecord(firstSeen: Date())
            guard r.unsyncedBitmaps?.contains(device) != true else { return }
            r.unsyncedBitmaps = (r.unsyncedBitmaps ?? []) + [device]
            records[plan] = r
            // Unlike the other records, this one must be on disk before the bitmap exists.
            try stateFile.save(records)
        }
    }

    // MARK: stopping

    /// Starts no run any more, and waits until every run has either given up
    /// or returned from its transaction, so that the daemon's shutdown then
    /// sees (and cancels) every job a plan started.
    func beginStop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while preparing > 0 || schedulerRunning { condition.wait() }
        condition.unlock()
    }

    /// After the daemon's shutdown cancelled the jobs: lets the runs record how they ended.
    func waitForRuns(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        while !running.isEmpty && Date() < deadline { _ = condition.wait(until: deadline) }
        let left = Array(running.keys)
        condition.unlock()
        if !left.isEmpty { log("plans still running at exit: \(left.sorted().joined(separator: ", "))") }
    }

    // MARK: QMP

    /// `x-query-plans`: the configuration file, its last error, and each plan
    /// with its schedule, next run and last run.
    func query() -> JSONValue {
        locked {
            func time(_ d: Date?) -> JSONValue { d.map { .string(CivilTime.iso8601($0)) } ?? .null }
            let plans: [JSONValue] = config.plans.map { plan in
                let r = records[plan.name]
                var o: [String: JSONValue] = [
                    "name": .string(plan.name), "schedule": .string(plan.schedule.text),
                    "devices": .array(plan.devices.map { .string($0.name) }), "repository": .string(plan.repository),
                    "format": .string(plan.format.rawValue),
                    "bitmap": plan.format == .qcow2 ? .string(plan.bitmap) : .null,
                    "next-run": time(nextRun(plan)), "last-run": time(r?.lastRun),
                    "last-result": r?.lastResult.map { .string($0) } ?? .null,
                    "last-error": r?.lastError.map { .string($0) } ?? .null,
                    "last-duration": r?.lastDuration.map { .double($0) } ?? .null,
                    "last-success": time(r?.lastSuccess),
                    "running": .bool(running[plan.name] != nil),
                ]
                if let w = r?.lastWarning { o["last-warning"] = .string(w) }
                if let b = r?.lastBackups { o["last-backups"] = .array(b.map(\.json)) }
                return .object(o)
            }
            return .object([
                "config": .string(configPath), "config-error": configError.map { .string($0) } ?? .null,
                "config-loaded": time(loadedAt), "plans": .array(plans),
            ])
        }
    }

    /// `x-plan-run {name}`: starts a run now and returns; its end is the event
    /// X_PLAN_COMPLETED (and `x-query-plans`).
    func runNow(_ name: String) throws -> JSONValue {
        try locked {
            guard !stopping else { throw CommandError("ringbackd is stopping") }
            guard let plan = config.plan(named: name) else {
                let names = config.plans.map(\.name)
                throw CommandError("plan '\(name)' is not in the configuration \(configPath)"
                                   + (names.isEmpty ? " (it has no plans)" : " (plans: \(names.joined(separator: ", ")))"))
            }
            if let since = running[name] {
                throw CommandError("plan '\(name)' is already running (since \(CivilTime.iso8601(since)))")
            }
            let now = Date()
            startRun(plan, at: now)
            return .object(["name": .string(name), "started-at": .string(CivilTime.iso8601(now))])
        }
    }
}
