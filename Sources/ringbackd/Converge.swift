import BlockIO
import ControlProtocol
import DirtyBitmaps
import Foundation
import Jobs

/// `x-consistency: converge` (DESIGN §11): the copy runs live while a private
/// recorder collects the writes it races with; passes re-copy them until few
/// remain (`threshold` bytes, at most `maxPasses` passes), then the job is
/// `ready`. On `job-complete` (or at once with `auto-complete`) the devices of
/// every converging job of the group are frozen together, each job copies
/// what is left, and the filesystems are thawed: that final freeze is the
/// backup's point in time, and the job's bitmap is split there.
struct ConvergeOptions {
    var threshold: UInt64 = 16 << 20
    var maxPasses = 10
    var autoComplete = false
}

/// Drives one converging job's passes from its copy thread (the image's
/// `nextPass` callback).
final class ConvergeDriver: @unchecked Sendable {
    private unowned let daemon: Daemon
    private let job: Job
    private let node: Node
    let recorder: WriteRecorder
    private var passes = 1
    private var ready = false
    private var finalTaken = false
    /// Bytes the final pass copied inside the freeze.
    private var finalBytes: UInt64 = 0

    /// What the convergence did, for the job's summary.
    var report: JSONValue {
        let freeze = daemon.jobs.locked { job.group.convergeFreeze }
        return .object([
            "passes": .int(Int64(passes)), "final-bytes": .int(Int64(finalBytes)),
            "frozen-seconds": .double(freeze?.frozenSeconds ?? 0),
            "quiesce-seconds": .double(freeze?.quiesceSeconds ?? 0),
        ])
    }

    init(daemon: Daemon, job: Job, node: Node, recorder: WriteRecorder) {
        self.daemon = daemon
        self.job = job
        self.node = node
        self.recorder = recorder
    }

    private var options: ConvergeOptions { job.work.converge }

    /// The ranges for the next pass, or nil once the final pass is done.
    func nextPass() throws -> [Extent]? {
        job.progressBase += job.control.bytesDone
        if finalTaken {
            // The last pass read the device while it was frozen only if the
            // watchdog still holds the freeze now.
            let held = daemon.jobs.finalFreezeHolds(job)
            daemon.jobs.finalPassDone(job, passes: passes)
            guard held else {
                throw CommandError("the final freeze ended (no word for the freeze timeout, the watchdog thawed) before "
                                   + "the last pass finished; the image would not be of one point in time")
            }
            return nil
        }
        while true {
            if job.control.isCancelled { throw CopyError.cancelled }
            try daemon.barrier(disk: node.disk)
            let dirty = daemon.locked { recorder.bitmap.count }
            if !ready && (dirty <= options.threshold || passes >= options.maxPasses) {
                ready = daemon.jobs.becomeReady(job)
            }
            if ready && (options.autoComplete || daemon.jobs.completeRequested(job)) {
                try daemon.jobs.finalFreeze(job)
                // Frozen: every write the filesystems made is complete; the
                // barrier brings all of them into the recorder and the bitmaps.
                try daemon.barrier(disk: node.disk)
                finalTaken = true
                passes += 1
                let extents = daemon.locked {
                    if let name = job.work.bitmap { try? node.bitmaps.absorbSuccessor(name) }
                    return take()
                }
                finalBytes = extents.reduce(0) { $0 + $1.length }
                return extents
            }
            // Not converged yet, or ready and waiting for job-complete while the
            // device keeps changing: another pass keeps the final one short.
            if dirty > options.threshold || (!ready && dirty > 0) {
                passes += 1
                return daemon.locked { take() }
            }
            usleep(50_000)
        }
    }

    /// The recorder's ranges, and an empty recorder. Called under the daemon lock.
    private func take() -> [Extent] {
        let extents = Array(recorder.bitmap.dirtyExtents)
        recorder.bitmap.clear()
        return extents
    }
}

/// The one final freeze of the converging jobs of a group.
final class ConvergeFreeze: @unchecked Sendable {
    var arrived = Set<ObjectIdentifier>()
    var done = Set<ObjectIdentifier>()
    var freezing = false
    var section: QuiescedSection?
    var error: Error?
    var passes: [String: Int] = [:]
    /// When the group began to quiesce (hooks, then FIFREEZE's sync) and how
    /// long the filesystems were then frozen (monotonic seconds).
    var quiesceStartedAt = 0.0
    var quiesceSeconds: Double?
    var frozenSeconds: Double?
}

extension JobList {
    /// A converging job's copy has converged: running → ready, BLOCK_JOB_READY.
    /// Returns false while the job is paused (it becomes ready after resume).
    func becomeReady(_ job: Job) -> Bool {
        locked {
            guard job.status == .running else { return false }
            job.transition(to: .ready, emit: daemon.emit)
            daemon.emit("BLOCK_JOB_READY", .object(job.eventData))
            return true
        }
    }

    func completeRequested(_ job: Job) -> Bool { locked { job.completeRequested } }

    /// Waits until every converging job of the job's group has come here, then
    /// one of them freezes all their devices; returns once frozen.
    func finalFreeze(_ job: Job) throws {
        let group = job.group
        let freeze: ConvergeFreeze = locked {
            let f = group.convergeFreeze ?? ConvergeFreeze()
            group.convergeFreeze = f
            f.arrived.insert(ObjectIdentifier(job))
            return f
        }
        while true {
            let (freezer, members): (Bool, [Job]) = try locked {
                if job.cancelRequested { throw CopyError.cancelled }
                if let e = freeze.error { throw e }
                if freeze.section != nil { return (false, []) }
                let members = group.jobs.filter { $0.work.consistency == .converge && !$0.cancelRequested }
                if !freeze.freezing && members.allSatisfy({ freeze.arrived.contains(ObjectIdentifier($0)) }) {
                    freeze.freezing = true
                    return (true, members)
                }
                return (false, members)
            }
            if freezer {
                locked { freeze.quiesceStartedAt = monotonicNow() }
                do {
                    let section = try daemon.quiesce(Array(Set(members.map(\.work.device))).sorted())
                    locked { freeze.section = section }
                } catch {
                    locked { freeze.error = error }
                    throw error
                }
                return
            }
            if locked({ freeze.section != nil }) { return }
            usleep(5_000)
        }
    }

    /// Whether the group's final freeze is still in force (the watchdog has not thawed).
    func finalFreezeHolds(_ job: Job) -> Bool {
        guard let section = locked({ job.group.convergeFreeze?.section }) else { return false }
        return section.hold.plan.mountPoints.isEmpty || section.hold.remaining() > 0
    }

    /// A converging job has copied what was left (or ended): the last one of
    /// its group thaws, and the freeze's length is reported.
    func finalPassDone(_ job: Job, passes: Int? = nil) {
        let finished: (ConvergeFreeze, QuiescedSection, [String])? = locked {
            guard let freeze = job.group.convergeFreeze, let section = freeze.section else { return nil }
            freeze.done.insert(ObjectIdentifier(job))
            if let passes { freeze.passes[job.id] = passes }
            let members = job.group.jobs.filter { $0.work.consistency == .converge }
            guard members.allSatisfy({ freeze.done.contains(ObjectIdentifier($0)) || !$0.copying && $0 !== job }) else { return nil }
            freeze.section = nil
            return (freeze, section, members.map(\.id))
        }
        guard let (freeze, section, ids) = finished else { return }
        let thaw = daemon.resume(section, hooksInBackground: true)
        var seconds = 0.0
        if case .requested(let s) = thaw { seconds = s }
        if case .expired(let s) = thaw { seconds = s }
        locked {
            freeze.frozenSeconds = seconds
            freeze.quiesceSeconds = monotonicNow() - freeze.quiesceStartedAt
            daemon.emit("X_CONVERGE_FROZEN", .object([
                "jobs": .array(ids.map { .string($0) }), "seconds": .double(seconds),
                "quiesce-seconds": .double(freeze.quiesceSeconds ?? 0),
                "passes": .object(freeze.passes.mapValues { .int(Int64($0)) }),
                "expired": .bool({ if case .expired = thaw { return true }; return false }()),
            ]))
        }
    }
}
