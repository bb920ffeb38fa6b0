/// A job's status, with QEMU's names (DESIGN §9).
///
/// The life of a backup job: `created` (made in a transaction's prepare) →
/// `running` (started at commit) ⇄ `paused` → `waiting` (its copy is done; it
/// waits for the rest of its group) → `pending` (ready to finalize) →
/// `concluded` (finalized; its result can be read) → `null` (dismissed).
/// `aborting` is entered on an error or a cancel. `ready` and `standby` are
/// for jobs that converge (a live copy that waits for `job-complete`).
public enum JobStatus: String, CaseIterable, Sendable, Codable {
    case undefined, created, running, paused, ready, standby, waiting, pending, aborting, concluded, null
}

/// What a client can ask of a job. Each QMP job command is one verb.
public enum JobVerb: String, CaseIterable, Sendable {
    case cancel, pause, resume
    case setSpeed = "set-speed"
    case complete, finalize, dismiss, change
}

/// The job model as two tables readable on one screen: which status may follow
/// which, and which verb each status accepts. Everything else in the daemon
/// asks these tables; nothing decides a transition on its own.
public enum JobTable {
    /// Whether a job in `from` may move to `to`.
    public static func canTransition(from: JobStatus, to: JobStatus) -> Bool {
        switch from {
        case .undefined: to == .created
        case .created: [.running, .aborting, .null].contains(to)
        case .running: [.paused, .ready, .waiting, .aborting].contains(to)
        case .paused: to == .running
        case .ready: [.standby, .waiting, .aborting].contains(to)
        case .standby: to == .ready
        case .waiting: [.pending, .aborting].contains(to)
        case .pending: [.aborting, .concluded].contains(to)
        case .aborting: [.aborting, .concluded].contains(to)
        case .concluded: to == .null
        case .null: false
        }
    }

    /// Whether a job in `status` accepts `verb`.
    public static func allows(_ verb: JobVerb, in status: JobStatus) -> Bool {
        switch verb {
        // A job can be cancelled until it starts to abort or has concluded.
        case .cancel: [.created, .running, .paused, .ready, .standby, .waiting, .pending].contains(status)
        // Pausing, resuming and a new speed matter only while a copy can still run.
        case .pause, .resume, .setSpeed: [.created, .running, .paused, .ready, .standby].contains(status)
        case .complete: status == .ready
        case .finalize: status == .pending
        case .dismiss: status == .concluded
        case .change: [.running, .paused, .ready].contains(status)
        }
    }

    /// The refusal QEMU gives for a verb in the wrong status, word for word.
    public static func refusal(job id: String, status: JobStatus, verb: JobVerb) -> String {
        "Job '\(id)' in state '\(status.rawValue)' cannot accept command verb '\(verb.rawValue)'"
    }

    /// Throws the refusal unless `status` accepts `verb`.
    public static func check(_ verb: JobVerb, job id: String, status: JobStatus) throws(JobError) {
        guard allows(verb, in: status) else { throw JobError(refusal(job: id, status: status, verb: verb)) }
    }
}

/// A refused job command; the message is what the QMP client sees.
public struct JobError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What a backup job does on an I/O error (QEMU's `BlockdevOnError`).
public enum ErrorPolicy: String, CaseIterable, Sendable {
    /// Fail the job.
    case report
    /// Retry the failed I/O, as QEMU's backup does; ringback bounds the retries.
    case ignore
    /// Pause the job; `job-resume` retries the I/O.
    case stop
    /// `stop` when the error is ENOSPC, `report` otherwise.
    case enospc

    /// What to do about one failure with `errno`.
    public func action(errno: Int32, enospc: Int32) -> ErrorAction {
        switch self {
        case .report: .report
        case .ignore: .ignore
        case .stop: .stop
        case .enospc: errno == enospc ? .stop : .report
        }
    }
}

/// The action taken on one error, as `BLOCK_JOB_ERROR` reports it.
public enum ErrorAction: String, Sendable {
    case report, ignore, stop
}
