import Backup
import BlockIO
import ControlProtocol
import Foundation
import Jobs

/// A job as ringbackd holds it. Every field that changes is guarded by the
/// `JobList` lock; progress lives in `control`'s atomics.
final class Job: @unchecked Sendable {
    let id: String
    let work: BackupWork
    let autoFinalize: Bool
    let autoDismiss: Bool
    let control: CopyControl
    /// Feeds the bytes-copied counter and the throughput gauge (Metrics.swift).
    let meter: CopyMeter
    /// The jobs that finish together (a grouped transaction), or this job alone.
    let group: JobGroup
    fileprivate(set) var status: JobStatus = .undefined
    /// A client's pause (or a `stop` error) that a `job-resume` lifts.
    var userPaused = false
    /// A cancel was asked, by a client or by the job's group.
    var cancelRequested = false
    /// The copy thread runs.
    var copying = false
    /// Why the job failed; nil while it has not, and for a cancel.
    var errorMessage: String?
    /// QEMU's io-status: ok, failed or nospace.
    var ioStatus = "ok"
    /// Set while the copy waits on a `stop` error for `job-resume` or a cancel.
    var stoppedOnError: DispatchSemaphore?
    /// When the job last went on after a `stop` error (monotonicNow()).
    var resumedFromErrorAt: Double?
    /// Retries of `ignore` in a row; bounded so a dead sector cannot spin forever.
    var ignoredInARow = 0
    /// When the job started and ended, for the catalog and the events.
    var startedAt: Date?
    /// `job-complete` was asked (a converging job in `ready`).
    var completeRequested = false
    /// Bytes done in earlier passes of a converging copy.
    var progressBase: UInt64 = 0
    /// The freeze this job's copy holds (`x-consistency: frozen`).
    var freeze: SharedFreeze?
    /// The job's backup in the catalog.
    var catalogID: String?
    /// The shared lock on the chain folder the job writes into, held until the
    /// job is finalized, so no merge outside this daemon touches the folder.
    var chainLock: ChainLock?
    var finishedAt: Date?

    init(id: String, work: BackupWork, autoFinalize: Bool, autoDismiss: Bool, group: JobGroup) {
        self.id = id
        self.work = work
        self.autoFinalize = autoFinalize
        self.autoDismiss = autoDismiss
        self.group = group
        meter = CopyMeter(device: work.device)
        control = CopyControl(speedLimit: work.options.speedLimit, onRead: meter.record)
    }

    /// Moves to `next` as the table allows and says so to every client.
    /// A transition the table refuses is a bug in the daemon, not bad input.
    func transition(to next: JobStatus, emit: (String, JSONValue) -> Void) {
        precondition(JobTable.canTransition(from: status, to: next),
                     "job \(id): \(status.rawValue) → \(next.rawValue) is not in the job table")
        status = next
        emit("JOB_STATUS_CHANGE", .object(["id": .string(id), "status": .string(next.rawValue)]))
    }

    var progressDone: UInt64 { progressBase + control.bytesDone }
    var progressTotal: UInt64 { progressBase + max(control.bytesTotal, control.bytesDone) }

    /// `query-jobs`' JobInfo.
    var info: JSONValue {
        var o: [String: JSONValue] = [
            "id": .string(id), "type": .string("backup"), "status": .string(status.rawValue),
            "current-progress": .int(Int64(progressDone)), "total-progress": .int(Int64(progressTotal)),
        ]
        if let errorMessage { o["error"] = .string(errorMessage) }
        if let s = work.summary { o["x-summary"] = s }
        o["x-image"] = .string(work.image)
        if let catalogID { o["x-backup"] = .string(catalogID) }
        return .object(o)
    }

    /// `query-block-jobs`' BlockJobInfo.
    var blockInfo: JSONValue {
        .object([
            "type": .string("backup"), "device": .string(id), "len": .int(Int64(progressTotal)),
            "offset": .int(Int64(progressDone)), "busy": .bool(status == .running && !control.isIdle),
            "paused": .bool(userPaused), "speed": .int(Int64(control.speedLimit)), "io-status": .string(ioStatus),
            "ready": .bool(status == .ready || status == .standby), "status": .string(status.rawValue),
            "auto-finalize": .bool(autoFinalize), "auto-dismiss": .bool(autoDismiss),
            "x-node": .string(work.device),
        ])
    }

    /// The data of BLOCK_JOB_COMPLETED, _CANCELLED and _READY.
    var eventData: [String: JSONValue] {
        ["type": .string("backup"), "device": .string(id), "len": .int(Int64(progressTotal)),
         "offset": .int(Int64(progressDone)), "speed": .int(Int64(control.speedLimit))]
    }
}

/// Jobs that complete together. In an `individual` transaction each job is
/// its own group; in a `grouped` one, the group finalizes only when every job
/// succeeded, and one failure cancels the others.
final class JobGroup: @unchecked Sendable {
    let grouped: Bool
    var jobs: [Job] = []
    /// The one final freeze of its converging jobs.
    var convergeFreeze: ConvergeFreeze?
    init(grouped: Bool) { self.grouped = grouped }
}
