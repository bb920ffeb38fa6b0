import Backup
import BlockIO
import ControlProtocol
import DirtyBitmaps
import Foundation
import Jobs
import Quiesce

/// The daemon's jobs and the rules that move them (DESIGN §9). One recursive
/// lock guards every job's status; it is taken before the daemon's own lock,
/// never after. Events are sent under it, so clients see them in order.
final class JobList: @unchecked Sendable {
    private let lock = NSRecursiveLock()
    private var jobs: [Job] = []
    /// Chain folders (canonical paths) under maintenance, with what holds them:
    /// no backup may be created into one meanwhile.
    private var maintained: [String: String] = [:]
    unowned let daemon: Daemon
    /// Consecutive `ignore` retries of one failing I/O before the job fails.
    static let ignoreRetryLimit = 8

    init(daemon: Daemon) { self.daemon = daemon }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// `body` under the lock, or nil when a transaction holds it past
    /// `deadline` (the metrics show their last figures rather than wait).
    func locked<T>(before deadline: Date, _ body: () -> T) -> T? {
        guard lock.lock(before: deadline) else { return nil }
        defer { lock.unlock() }
        return body()
    }

    private func emit(_ name: String, _ data: JSONValue) { daemon.emit(name, data) }

    /// The job named `id`; an id stays taken until its job is dismissed.
    func job(_ id: String) throws -> Job {
        try locked {
            guard let j = jobs.first(where: { $0.id == id }) else { throw CommandError("Job '\(id)' not found", class: "DeviceNotActive") }
            return j
        }
    }

    var all: [Job] { locked { jobs } }

    // MARK: life cycle

    /// Creates a job in `created` (a transaction's prepare).
    func create(id: String, work: BackupWork, autoFinalize: Bool, autoDismiss: Bool, group: JobGroup) throws -> Job {
        try locked {
            guard !id.isEmpty, id.first!.isLetter || id.first == "/" else {
                throw CommandError("Invalid job ID '\(id)'")
            }
            guard !jobs.contains(where: { $0.id == id }) else { throw CommandError("Job ID '\(id)' already in use") }
            if let other = jobs.first(where: { $0.work.image == work.image && $0.status != .concluded }) {
                throw CommandError("image \(work.image) is already the target of job '\(other.id)'")
            }
            if let chain = work.chainDirectory {
                let folder = canonicalChain(chain)
                if let what = maintained[folder] {
                    throw CommandError("chain folder \(chain) is busy: \(what); a backup into it can start when that finishes")
                }
                if FileManager.default.fileExists(atPath: folder + "/" + ChainMerge.journalName) {
                    throw CommandError("a merge of chain folder \(chain) was interrupted; finish it first "
                                       + "(ringback merge \(chain), or restart ringbackd)")
                }
            }
            let lock = try work.chainDirectory.map { dir -> ChainLock in
                do { return try ChainLock(ChainDirectory(path: dir), shared: true) } catch { throw CommandError("\(error)") }
            }
            let job = Job(id: id, work: work, autoFinalize: autoFinalize, autoDismiss: autoDismiss, group: group)
            job.chainLock = lock
            group.jobs.append(job)
            jobs.append(job)
            job.transition(to: .created, emit: emit)
            return job
        }
    }

    /// Drops a job that never started (its transaction aborted).
    func discardCreated(_ job: Job) {
        locked {
            job.chainLock?.release()
            job.transition(to: .null, emit: emit)
            jobs.removeAll { $0 === job }
            job.group.jobs.removeAll { $0 === job }
        }
    }

    /// Starts a created job (a transaction's commit): its copy runs on a thread.
    func start(_ job: Job) {
        locked {
            job.control.onFault { [weak self, weak job] fault in
                guard let self, let job else { return .fail }
                return self.handle(fault, of: job)
            }
            job.transition(to: .running, emit: emit)
            job.startedAt = Date()
            daemon.catalogStarted(job)
            job.logStart()
            if job.userPaused {
                job.control.pause()
                job.transition(to: .paused, emit: emit)
            }
            if job.cancelRequested { job.control.cancel() }
            job.copying = true
        }
        let thread = Thread { [self] in
            let result = Result { try job.work.run(control: job.control) }
            copyEnded(job, result)
        }
        thread.name = "ringbackd-job-\(job.id)"
        thread.start()
    }

    private func copyEnded(_ job: Job, _ result: Result<JSONValue, Error>) {
        // A frozen copy is done with the freeze, whatever its outcome; so is a
        // converging one with its group's final freeze.
        job.freeze?.release(job)
        if job.work.consistency == .converge { finalPassDone(job) }
        locked {
            job.copying = false
            switch result {
            case .success(let summary) where !job.cancelRequested:
                job.work.summary = summary
                if job.status == .paused { job.transition(to: .running, emit: emit) }
                if job.status == .standby { job.transition(to: .ready, emit: emit) }
                job.transition(to: .waiting, emit: emit)
            case .success:
                abort(job)
            case .failure(let error):
                if case CopyError.cancelled = error, job.cancelRequested {} else if job.errorMessage == nil {
                    job.errorMessage = "\(error)"
                }
                abort(job)
            }
            advance(job.group)
        }
    }

    /// Moves a job to aborting; in a grouped transaction every other job is cancelled.
    private func abort(_ job: Job) {
        if job.status == .paused { job.transition(to: .running, emit: emit) }
        if job.status == .standby { job.transition(to: .ready, emit: emit) }
        if job.status != .aborting { job.transition(to: .aborting, emit: emit) }
        guard job.group.grouped else { return }
        for other in job.group.jobs where other !== job && !other.cancelRequested {
            requestCancel(other)
        }
    }

    /// A cancel: a running copy is stopped at its next chunk; a finished one aborts now.
    private func requestCancel(_ job: Job) {
        job.cancelRequested = true
        job.control.cancel()
        job.stoppedOnError?.signal()
        switch job.status {
        case .waiting, .pending, .ready, .standby:
            abort(job)
        default:
            break
        }
    }

    /// Takes a group as far as it can go: once no copy runs, either every job
    /// aborts (one failed or was cancelled) or all move to pending together and,
    /// when none waits for `job-finalize`, finalize together.
    private func advance(_ group: JobGroup) {
        guard !group.jobs.contains(where: { $0.copying }) else { return }
        let members = group.jobs
        if members.contains(where: { $0.status == .aborting }) {
            for j in members where j.status == .waiting || j.status == .pending {
                j.cancelRequested = true
                j.transition(to: .aborting, emit: emit)
            }
            for j in members where j.status == .aborting { finalize(j, succeeded: false) }
            return
        }
        guard members.allSatisfy({ $0.status == .waiting || $0.status == .pending }) else { return }
        for j in members where j.status == .waiting {
            j.transition(to: .pending, emit: emit)
            emit("BLOCK_JOB_PENDING", .object(["type": .string("backup"), "id": .string(j.id)]))
        }
        if members.allSatisfy(\.autoFinalize) {
            for j in members { finalize(j, succeeded: true) }
        }
    }

    /// Commit or abort of one job: the image is published or discarded, the
    /// bitmap's freeze ends by the sync rule, the catalog is told, the event sent.
    private func finalize(_ job: Job, succeeded: Bool) {
        var ok = succeeded
        if ok {
            do { try job.work.publish() } catch {
                job.errorMessage = "cannot publish image \(job.work.image): \(error)"
                ok = false
            }
        }
        if !ok { job.work.discard() }
        job.chainLock?.release()
        daemon.removeRecorder(of: job.work)
        if let snapshot = job.work.snapshot, let reason = snapshot.jobEnded(job.work, succeeded: ok) {
            job.errorMessage = reason + (job.errorMessage.map { " (\($0))" } ?? "")
        }
        daemon.endFreeze(of: job.work, succeeded: ok, completed: job.control.completedExtents)
        job.finishedAt = Date()
        daemon.catalogFinished(job, succeeded: ok)
        job.logEnd(succeeded: ok)
        var data = job.eventData
        if ok {
            if let s = job.work.summary { data["x-summary"] = s }
            emit("BLOCK_JOB_COMPLETED", .object(data))
        } else if let message = job.errorMessage {
            data["error"] = .string(message)
            emit("BLOCK_JOB_COMPLETED", .object(data))
        } else {
            emit("BLOCK_JOB_CANCELLED", .object(data))
        }
        job.transition(to: .concluded, emit: emit)
        if job.autoDismiss { dismissNow(job) }
    }

    private func dismissNow(_ job: Job) {
        job.transition(to: .null, emit: emit)
        jobs.removeAll { $0 === job }
        job.control.onFault(nil)
    }

    // MARK: errors during the copy

    /// The job's error policy for one failed read or write (runs on the copy's
    /// engine thread). `stop` holds the engine here until resume or cancel.
    private func handle(_ fault: CopyFault, of job: Job) -> CopyFaultDecision {
        let policy = fault.operation == .read ? job.work.onSourceError : job.work.onTargetError
        let action = policy.action(errno: fault.error.errno, enospc: ENOSPC)
        let wait = DispatchSemaphore(value: 0)
        let decision: CopyFaultDecision? = locked {
            // I/O that was in flight when a `stop` error paused the job fails
            // the same way, but its completion may be reaped only after the
            // resume: the operator has fixed the cause since, so retry it.
            if let resumed = job.resumedFromErrorAt, fault.issuedAt < resumed, !job.cancelRequested { return .retry }
            job.ioStatus = fault.error.errno == ENOSPC ? "nospace" : "failed"
            emit("BLOCK_JOB_ERROR", .object([
                "device": .string(job.id), "operation": .string(fault.operation.rawValue), "action": .string(action.rawValue),
                "x-error": .string(fault.error.description),
            ]))
            if job.cancelRequested { return .fail }
            switch action {
            case .report:
                return .fail
            case .ignore:
                job.ignoredInARow += 1
                return job.ignoredInARow <= Self.ignoreRetryLimit ? .retry : .fail
            case .stop:
                job.userPaused = true
                job.control.pause()
                job.stoppedOnError = wait
                if job.status == .running { job.transition(to: .paused, emit: emit) }
                return nil
            }
        }
        if let decision { return decision }
        wait.wait()
        return locked {
            job.stoppedOnError = nil
            if job.cancelRequested { return .fail }
            job.ioStatus = "ok"
            job.resumedFromErrorAt = monotonicNow()
            return .retry
        }
    }

    /// The freeze a `frozen` copy relied on ended before the copy did: the
    /// image would mix two points in time, so the jobs fail.
    func freezeExpired(_ jobs: [Job], timeout: Double) {
        locked {
            for job in jobs where job.copying && !job.cancelRequested {
                job.errorMessage = "the freeze of its filesystems ended (no progress for \(Int(timeout)) s, the watchdog thawed them) "
                    + "before the copy finished; the image would not be of one point in time"
                requestCancel(job)
            }
        }
    }

    // MARK: verbs

    func pause(_ id: String) throws {
        let job = try locked { () throws -> Job in
            let job = try self.job(id)
            try check(.pause, job)
            guard !job.userPaused else { throw CommandError("Job '\(id)' is already paused") }
            job.userPaused = true
            job.control.pause()
            return job
        }
        // The job counts as paused once its engine has drained what it had in
        // flight: from then on its progress holds still.
        let deadline = Date().addingTimeInterval(10)
        while locked({ job.copying && job.userPaused && !job.control.isIdle && job.stoppedOnError == nil })
                && Date() < deadline {
            usleep(1000)
        }
        locked {
            if job.userPaused && job.status == .running { job.transition(to: .paused, emit: emit) }
            if job.userPaused && job.status == .ready { job.transition(to: .standby, emit: emit) }
        }
    }

    func resume(_ id: String) throws {
        try locked {
            let job = try self.job(id)
            try check(.resume, job)
            guard job.userPaused else { throw CommandError("Can't resume a job that was not paused") }
            job.userPaused = false
            job.ignoredInARow = 0
            job.control.resume()
            job.stoppedOnError?.signal()
            if job.status == .paused { job.transition(to: .running, emit: emit) }
            if job.status == .standby { job.transition(to: .ready, emit: emit) }
        }
    }

    func cancel(_ id: String) throws {
        try locked {
            let job = try self.job(id)
            try check(.cancel, job)
            requestCancel(job)
            if job.status == .aborting { advance(job.group) }
        }
    }

    func setSpeed(_ id: String, _ speed: Int64) throws {
        try locked {
            let job = try self.job(id)
            try check(.setSpeed, job)
            guard speed >= 0 else { throw CommandError("Parameter 'speed' expects a non-negative value") }
            job.control.speedLimit = UInt64(speed)
        }
    }

    func complete(_ id: String) throws {
        try locked {
            let job = try self.job(id)
            try check(.complete, job)
            job.completeRequested = true
        }
    }

    func finalize(_ id: String) throws {
        try locked {
            let job = try self.job(id)
            try check(.finalize, job)
            let members = job.group.jobs
            guard members.allSatisfy({ $0.status == .pending }) else {
                throw CommandError("Job '\(id)' waits for the other jobs of its transaction to finish")
            }
            for j in members { finalize(j, succeeded: true) }
        }
    }

    func dismiss(_ id: String) throws {
        try locked {
            let job = try self.job(id)
            try check(.dismiss, job)
            dismissNow(job)
        }
    }

    private func check(_ verb: JobVerb, _ job: Job) throws {
        do { try JobTable.check(verb, job: job.id, status: job.status) } catch {
            throw CommandError(error.message)
        }
    }

    // MARK: chain maintenance

    /// The job that writes into `chain` (a canonical folder path), if any: a
    /// job counts until it is concluded, since it publishes its image at the end.
    func writer(of chain: String) -> Job? {
        locked { jobs.first { j in j.status != .concluded && j.work.chainDirectory.map(canonicalChain) == chain } }
    }

    /// Holds `chain` for maintenance (`what` says by what): refused while a
    /// job writes into it or other maintenance holds it. Taken under the job
    /// lock, which a transaction holds from its first prepare to its last
    /// commit, so no backup into the folder is created in between.
    func beginMaintenance(of chain: String, _ what: String) throws {
        try locked {
            if let job = writer(of: chain) {
                throw CommandError("chain folder \(chain) is being written by job '\(job.id)' (\(job.work.image)); "
                                   + "try again when it has finished")
            }
            if let other = maintained[chain] { throw CommandError("chain folder \(chain) is busy: \(other)") }
            maintained[chain] = what
        }
    }

    func endMaintenance(of chain: String) { locked { maintained[chain] = nil } }

    /// Whether `chain` is held for maintenance, and by what.
    func maintenance(of chain: String) -> String? { locked { maintained[chain] } }

    /// Whether any job is still doing something (the daemon waits for none at
    /// shutdown, but says which it interrupts).
    var active: [Job] { locked { jobs.filter { $0.copying } } }

    /// How many jobs copy, if the lock comes free within `timeout` seconds
    /// (a transaction holds it through its hooks; a status line must not wait).
    func activeCount(within timeout: TimeInterval) -> Int? {
        guard lock.lock(before: Date(timeIntervalSinceNow: timeout)) else { return nil }
        defer { lock.unlock() }
        return jobs.filter { $0.copying }.count
    }
}

/// A chain folder's path as maintenance compares it: absolute, without `.`,
/// `..` or symbolic links.
func canonicalChain(_ path: String) -> String {
    URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
}
