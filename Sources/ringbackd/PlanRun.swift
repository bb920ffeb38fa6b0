import BlockDevices
import Backup
import Catalog
import Config
import ControlProtocol
import Foundation
import DirtyBitmaps
import Jobs

/// How a plan run ended.
struct PlanOutcome {
    var succeeded: Bool
    var error: String?
    var warning: String?
    var backups: [PlanBackup] = []
    /// Devices whose bitmap a successful full backup synced (their unsynced mark goes).
    var synced: [String] = []
}

/// What one plan run needs from its scheduler: whether the daemon stops, and
/// the persistent marks of bitmaps made but not yet synced.
protocol PlanRunHost: AnyObject {
    /// False once the daemon stops: the run then starts nothing more.
    func mayStartTransaction() -> Bool
    /// The transaction call returned: the daemon's shutdown can now see every job it started.
    func transactionReturned()
    func isUnsynced(plan: String, device: String) -> Bool
    /// Persisted before the bitmap is made, so a crash or a failure cannot leave it trusted.
    func markUnsynced(plan: String, device: String) throws
}

/// One run of a plan (DESIGN §8, §10): for each device, a full backup into a
/// new chain or an incremental into the newest one, all in one transaction
/// built as a QMP client would build it and handed to `Daemon.handle`, then
/// the wait for its jobs, then retention.
final class PlanRun {
    let plan: BackupPlan
    unowned let daemon: Daemon
    unowned let host: PlanRunHost
    let started: Date

    init(plan: BackupPlan, daemon: Daemon, host: PlanRunHost, started: Date) {
        self.plan = plan
        self.daemon = daemon
        self.host = host
        self.started = started
    }

    /// What a run does with one device.
    struct Step {
        let device: BackupPlan.Device
        /// The resolved block device (/dev/loop3 for a symlink).
        let path: String
        /// <repository>/<device-id>
        let folder: String
        let full: Bool
        /// Why a full backup (nil for an incremental).
        let reason: String?
        /// The chain folder the backup goes into (made by `makeChainFolders` for a full).
        var chain: String
        var madeChain = false
        /// The bitmap must be removed (it is inconsistent) and/or made first.
        var removeBitmap = false
        var addBitmap = false
        var jobID: String
        /// drive-backup's target: the chain folder, or a file for raw.
        var target: String { plan.format == .raw ? chain + "/0000-full-" + stamp + ".raw" : chain }
        let plan: BackupPlan
        let stamp: String
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    func execute() -> PlanOutcome {
        var steps: [Step] = []
        // Until the transaction has returned, a stopping daemon waits for this
        // run: its shutdown must see every job the run starts.
        var returned = false
        func transactionReturned() {
            if !returned { returned = true; host.transactionReturned() }
        }
        defer { transactionReturned() }
        do {
            steps = try plan.devices.map(decide)
            guard host.mayStartTransaction() else { throw Failure("ringbackd is stopping; the run did not start") }
            try prepareBitmaps(&steps)
            try makeChainFolders(&steps)
            guard host.mayStartTransaction() else { throw Failure("ringbackd is stopping; the run did not start") }
            let jobs = try startTransaction(steps)
            transactionReturned()
            return finish(steps, wait(for: jobs))
        } catch {
            undo(steps, succeeded: [])
            return PlanOutcome(succeeded: false, error: (error as? CommandError)?.desc ?? "\(error)")
        }
    }

    // MARK: deciding

    /// Full or incremental for one device, and why.
    private func decide(_ device: BackupPlan.Device) throws -> Step {
        var st = stat()
        guard stat(device.path, &st) == 0 else {
            throw Failure("cannot back up \(device.name): the device does not exist (\(String(cString: strerror(errno))))")
        }
        guard st.st_mode & S_IFMT == S_IFBLK else { throw Failure("cannot back up \(device.name): it is not a block device") }
        let path: String
        do { path = try daemon.resolve(device.path) } catch { throw Failure("cannot back up \(device.name): \(error)") }
        let folder = plan.repository + "/" + device.id
        let stamp = CivilTime.compact(started)
        let jobID = "plan-\(plan.name)-\(device.id)"
        func full(_ reason: String) -> Step {
            Step(device: device, path: path, folder: folder, full: true, reason: reason, chain: "", jobID: jobID, plan: plan, stamp: stamp)
        }
        if plan.format == .raw { return full("format raw: every backup is a full one") }

        let bitmap = daemon.locked { daemon.node(path)?.bitmaps[plan.bitmap] }
        guard let newest = Self.chains(in: folder).last else {
            var s = full("no chain yet")
            s.removeBitmap = bitmap?.isInconsistent == true
            s.addBitmap = bitmap == nil || s.removeBitmap
            return s
        }
        let chain = folder + "/" + newest
        var reason: String?
        let images = ChainDirectory(path: chain).images()
        if images.isEmpty || !URL(fileURLWithPath: images[0]).lastPathComponent.dropFirst(4).hasPrefix("-full-") {
            reason = "the newest chain \(chain) holds no full backup"
        } else if bitmap == nil {
            reason = "the bitmap '\(plan.bitmap)' is not on \(device.name) (its first run, or the bitmap was removed)"
        } else if bitmap!.isInconsistent && !(plan.lvmSnapshot && hasThinDeltaBase(path, newest: images.last)) {
            // (With a kept thin snapshot of the newest image, thin_delta
            // gives the changes and re-arms the bitmap: no full backup needed.)
            reason = "the bitmap '\(plan.bitmap)' on \(device.name) is inconsistent: writes may have been missed"
        } else if host.isUnsynced(plan: plan.name, device: device.id) {
            reason = "the bitmap '\(plan.bitmap)' on \(device.name) was made by a run whose full backup did not complete"
        } else if let every = plan.newChainEvery, Date().timeIntervalSince(Self.chainDate(chain)) >= Double(every.seconds) {
            reason = "the newest chain is older than new-chain-every (\(every.text))"
        } else if let used = lastUseOfBitmap(device: path), !used.image.hasPrefix(chain + "/") {
            reason = "the bitmap '\(plan.bitmap)' was last used by backup \(used.id) into \(used.image), outside the newest chain"
        }
        if let reason {
            var s = full(reason)
            s.removeBitmap = bitmap?.isInconsistent == true
            s.addBitmap = bitmap == nil || s.removeBitmap
            return s
        }
        return Step(device: device, path: path, folder: folder, full: false, reason: nil, chain: chain, jobID: jobID,
                    plan: plan, stamp: stamp)
    }

    /// The chain folders of a device folder (`chain-<UTC>`), oldest first.
    static func chains(in folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.filter { $0.hasPrefix("chain-") && ChainDirectory.isDirectory(folder + "/" + $0) }.sorted()
    }

    /// When a chain was started: the time in its name, else its folder's mtime.
    static func chainDate(_ chain: String) -> Date {
        let name = URL(fileURLWithPath: chain).lastPathComponent
        if let d = CivilTime.parseCompact(name.dropFirst("chain-".count).prefix(16)) { return d }
        var st = stat()
        return stat(chain, &st) == 0 ? Date(timeIntervalSince1970: Double(st.st_mtim.tv_sec)) : .distantPast
    }

    /// The newest complete backup in the catalog that used the plan's bitmap on this device.
    private func lastUseOfBitmap(device: String) -> BackupRecord? {
        guard let catalog = daemon.catalog else { return nil }
        return (try? catalog.backups(device: device))?.last { $0.bitmap == plan.bitmap && $0.status == .complete }
    }

    // MARK: preparing

    /// An inconsistent bitmap is removed (the only way out of inconsistent),
    /// and a missing one made, persistent, before the transaction: the full
    /// backup then syncs it at its point in time.
    private func prepareBitmaps(_ steps: inout [Step]) throws {
        for i in steps.indices where steps[i].removeBitmap || steps[i].addBitmap {
            let s = steps[i]
            try host.markUnsynced(plan: plan.name, device: s.device.id)
            if s.removeBitmap {
                log("plan '\(plan.name)': removing the inconsistent bitmap '\(plan.bitmap)' of \(s.device.name) before a full backup")
                _ = try daemon.handle("block-dirty-bitmap-remove", Arguments(values: [
                    "node": .string(s.path), "name": .string(plan.bitmap)]))
            }
            _ = try daemon.handle("block-dirty-bitmap-add", Arguments(values: [
                "node": .string(s.path), "name": .string(plan.bitmap), "persistent": .bool(true)]))
        }
    }

    /// A new chain folder for every full backup: `chain-<UTC>` (a suffix when
    /// that name is taken).
    private func makeChainFolders(_ steps: inout [Step]) throws {
        for i in steps.indices where steps[i].full {
            var chain = steps[i].folder + "/chain-" + steps[i].stamp
            var n = 2
            while FileManager.default.fileExists(atPath: chain) {
                chain = steps[i].folder + "/chain-" + steps[i].stamp + "-\(n)"
                n += 1
            }
            do {
                try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
            } catch {
                throw Failure("cannot create the chain folder \(chain): \((error as NSError).localizedDescription)")
            }
            steps[i].chain = chain
            steps[i].madeChain = true
        }
    }

    /// Whether ringbackd kept a thin snapshot holding `newest`'s contents.
    private func hasThinDeltaBase(_ path: String, newest: String?) -> Bool {
        guard let newest else { return false }
        return SnapshotRecords.load(daemon.state).contains { $0.origin == path && $0.base?.image == newest }
    }

    // MARK: the transaction

    /// One `drive-backup` per device, grouped when there are several, so that
    /// either every device gets its backup at the one point in time or none does.
    private func startTransaction(_ steps: [Step]) throws -> [Job] {
        var actions: [JSONValue] = []
        for s in steps {
            var data: [String: JSONValue] = [
                "job-id": .string(s.jobID), "device": .string(s.path), "target": .string(s.target),
                "sync": .string(s.full ? "full" : "incremental"), "format": .string(plan.format.rawValue),
                "x-consistency": .string(plan.consistency.rawValue),
                // The run reads each job's outcome, then dismisses it.
                "auto-dismiss": .bool(false),
            ]
            if plan.format == .qcow2 {
                data["bitmap"] = .string(plan.bitmap)
                if s.full { data["bitmap-mode"] = .string("on-success") }
            }
            if plan.compression == .zstd { data["compress"] = .bool(true) }
            if plan.speedLimit > 0 { data["speed"] = .int(Int64(plan.speedLimit)) }
            if plan.consistency == .converge { data["auto-complete"] = .bool(true) }
            if plan.lvmSnapshot, let lv = try? BlockDevices.LVM().volume(named: s.path) {
                var snapshot: [String: JSONValue] = ["device": .string(s.path)]
                if lv.segmentType == .thin { snapshot["x-keep"] = .bool(true) }
                actions.append(.object(["type": .string("x-lvm-snapshot"), "data": .object(snapshot)]))
            }
            actions.append(.object(["type": .string("drive-backup"), "data": .object(data)]))
        }
        var arguments: [String: JSONValue] = ["actions": .array(actions)]
        if steps.count > 1 { arguments["properties"] = .object(["completion-mode": .string("grouped")]) }
        for s in steps {
            log("plan '\(plan.name)': \(s.full ? "full" : "incremental") backup of \(s.device.name) into \(s.chain)"
                + (s.reason.map { " (\($0))" } ?? ""))
        }
        _ = try daemon.handle("transaction", Arguments(values: arguments))
        return try steps.map { try daemon.jobs.job($0.jobID) }
    }

    /// Each job's outcome once it concluded: its error (nil for success) and its image.
    private func wait(for jobs: [Job]) -> [(error: String?, image: String)] {
        while !daemon.jobs.locked({ jobs.allSatisfy { $0.status == .concluded || $0.status == .null } }) {
            usleep(100_000)
        }
        return daemon.jobs.locked {
            jobs.map { job in
                if job.status == .concluded { try? daemon.jobs.dismiss(job.id) }
                let error = job.errorMessage ?? (job.cancelRequested ? "cancelled" : nil)
                return (error, job.work.image)
            }
        }
    }

    // MARK: the end

    private func finish(_ steps: [Step], _ results: [(error: String?, image: String)]) -> PlanOutcome {
        var outcome = PlanOutcome(succeeded: results.allSatisfy { $0.error == nil })
        for (s, r) in zip(steps, results) {
            outcome.backups.append(PlanBackup(device: s.device.name, kind: s.full ? "full" : "incremental",
                                              image: outcome.succeeded ? r.image : nil, reason: s.reason))
            if outcome.succeeded && s.full { outcome.synced.append(s.device.id) }
        }
        guard outcome.succeeded else {
            // The device whose job failed says why; the others of a group were cancelled because of it.
            let failed = zip(steps, results).filter { $0.1.error != nil && $0.1.error != "cancelled" }
            let cancelled = zip(steps, results).filter { $0.1.error == "cancelled" }
            var parts = failed.map { "\($0.0.device.name): \($0.1.error!)" }
            if !cancelled.isEmpty {
                let why = !host.mayStartTransaction() ? ": cancelled because ringbackd stopped"
                    : failed.isEmpty ? ": cancelled" : ": cancelled with the group"
                parts.append(cancelled.map(\.0.device.name).joined(separator: ", ") + why)
            }
            outcome.error = parts.joined(separator: "; ")
            undo(steps, succeeded: zip(steps, results).filter { $0.1.error == nil }.map(\.0.device.id))
            return outcome
        }
        outcome.warning = retain(steps)
        return outcome
    }

    /// After a failure: chain folders the run made are removed when nothing
    /// was published in them. A bitmap the run made stays marked unsynced,
    /// so the next run takes a full backup again.
    private func undo(_ steps: [Step], succeeded: [String]) {
        for s in steps where s.madeChain && !succeeded.contains(s.device.id) {
            rmdir(s.chain)
        }
    }

    /// Retention (`x-chain-retain`, the chain-maintenance helper's command),
    /// called by name so that the two can be built apart. Returns a warning.
    private func retain(_ steps: [Step]) -> String? {
        guard plan.keepIncrementals != nil || plan.keepChains != nil else { return nil }
        var warnings: [String] = []
        for s in steps {
            var args: [String: JSONValue] = ["chain-root": .string(s.folder)]
            if let k = plan.keepIncrementals { args["keep-incrementals"] = .int(Int64(k)) }
            if let k = plan.keepChains { args["keep-chains"] = .int(Int64(k)) }
            do {
                let summary = try daemon.handle("x-chain-retain", Arguments(values: args))
                log("plan '\(plan.name)': retention in \(s.folder): \(summary)")
            } catch let e as CommandError where e.errorClass == "CommandNotFound" {
                warnings.append("retention skipped: this ringbackd has no x-chain-retain")
                break
            } catch {
                warnings.append("retention in \(s.folder) failed: \((error as? CommandError)?.desc ?? "\(error)")")
            }
        }
        for w in warnings { log("plan '\(plan.name)': \(w)") }
        return warnings.isEmpty ? nil : warnings.joined(separator: "; ")
    }
}
