import ControlProtocol
import DirtyBitmaps
import Foundation
import Jobs

/// One action of a transaction (DESIGN §10). `prepare` does everything that
/// can fail and, when it fails, undoes its own part before throwing; `abort`
/// undoes a prepared action, `commit` cannot fail, `clean` runs last.
protocol TransactionAction: AnyObject {
    /// The device the action names, as given (resolved by the runner).
    var deviceName: String? { get }
    func prepare() throws
    func abort()
    func commit()
    func clean()
}

extension TransactionAction {
    func clean() {}
}

extension Daemon {
    /// `transaction`: parses the actions, then runs them all-or-nothing.
    func transaction(_ a: Arguments) throws -> JSONValue {
        try a.allow(["actions", "properties"])
        let properties = Arguments(values: try a.optionalObject("properties") ?? [:])
        let mode = try properties.optionalString("completion-mode") ?? "individual"
        guard mode == "individual" || mode == "grouped" else {
            throw CommandError("Parameter 'completion-mode' does not accept value '\(mode)' (individual or grouped)")
        }
        let group: JobGroup? = mode == "grouped" ? JobGroup(grouped: true) : nil
        var actions: [TransactionAction] = []
        for (i, value) in try a.array("actions").enumerated() {
            guard let object = value.objectValue else {
                throw CommandError("Invalid parameter type for 'actions[\(i)]', expected: object")
            }
            let action = Arguments(values: object)
            try action.allow(["type", "data"])
            let type = try action.string("type")
            let data = Arguments(values: try action.optionalObject("data") ?? [:])
            if group != nil && type != "drive-backup" && type != "x-lvm-snapshot" {
                throw CommandError("Action '\(type)' does not support Transaction property completion-mode = grouped")
            }
            actions.append(try makeAction(type, data, group: group))
        }
        try properties.allow(["completion-mode", "x-quiesce"])
        try run(actions, quiesce: try properties.optionalBool("x-quiesce") ?? true)
        return .object([:])
    }

    /// `drive-backup` outside a transaction: a transaction of one action, as QEMU does it.
    func driveBackup(_ a: Arguments) throws -> JSONValue {
        try run([DriveBackupAction(daemon: self, arguments: a, group: nil)])
        return .object([:])
    }

    private func makeAction(_ type: String, _ data: Arguments, group: JobGroup?) throws -> TransactionAction {
        switch type {
        case "abort": return AbortAction()
        case "drive-backup": return DriveBackupAction(daemon: self, arguments: data, group: group)
        case "x-lvm-snapshot": return LVMSnapshotAction(daemon: self, arguments: data)
        case "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
             "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge":
            return BitmapAction(daemon: self, type: type, arguments: data)
        default:
            throw CommandError("Parameter 'type' does not accept value '\(type)'")
        }
    }

    /// Prepare in order; on the first failure abort the prepared ones newest
    /// first and report that error; otherwise commit newest first; then clean.
    ///
    /// The job lock is held throughout so no job changes state mid-way, and the
    /// daemon lock from the first prepare to the last commit: the trackers
    /// cannot mark a write in between, so every bitmap and every job of the
    /// transaction shares one point in time, and an abort that restores a saved
    /// bitmap loses no write.
    func run(_ actions: [TransactionAction], quiesce quiescing: Bool = true) throws {
        try jobs.locked {
            // A device gets tracked before its first bitmap is added (DESIGN §7).
            var disks = Set<String>()
            var devices: [String] = []
            for action in actions {
                guard let name = action.deviceName, let path = try? resolve(name) else { continue }
                // So does a converging backup, whose passes follow the writes.
                let adds = (action as? BitmapAction)?.type == "block-dirty-bitmap-add"
                let converges = (action as? DriveBackupAction)?.converges == true
                if (adds || converges) && node(path) == nil {
                    try startTracking(path)
                }
                if let n = node(path) { disks.insert(n.disk) }
                if !devices.contains(path) { devices.append(path) }
            }
            // A backup of a volume that the transaction snapshots reads the snapshot.
            var snapshotted = Set<String>()
            for case let snapshot as LVMSnapshotAction in actions {
                guard let path = try? resolve(snapshot.deviceName ?? "") else { continue }
                snapshotted.insert(path)
                for case let backup as DriveBackupAction in actions where (try? resolve(backup.deviceName ?? "")) == path {
                    backup.snapshot = snapshot
                }
            }
            // A snapshotted volume's filesystems are not frozen here: lvcreate
            // suspends the volume, and dm's suspend freezes them itself (a
            // superblock frozen by FIFREEZE makes that suspend fail with EBUSY
            // before Linux 6.6). Its snapshot holds a consistent filesystem at a
            // moment inside the transaction; writes between the barrier and
            // that moment are in both the snapshot and the bitmap's successor,
            // so the next incremental copies them again rather than missing them.
            devices.removeAll { snapshotted.contains($0) }
            // The point in time (DESIGN §10, §11): hooks, then the freeze; once
            // frozen, every write the filesystems made is complete, and the
            // barrier puts all of them in the bitmaps before any prepare.
            let section = quiescing && !devices.isEmpty ? try quiesce(devices) : nil
            do {
                for disk in disks.sorted() { try barrier(disk: disk) }
            } catch {
                if let section { resume(section) }
                throw error
            }

            var failure: Error?
            var handedOver = false
            locked {
                var prepared: [TransactionAction] = []
                for action in actions {
                    do {
                        try action.prepare()
                        prepared.append(action)
                    } catch {
                        failure = error
                        break
                    }
                }
                // Commit only while the freeze certainly holds: if the watchdog
                // thawed (its timeout passed in a slow hook or prepare), the
                // point in time is lost and the transaction must not happen.
                if failure == nil, let section, !section.hold.plan.mountPoints.isEmpty,
                   section.hold.remaining() < min(0.5, section.hold.timeout / 2) {
                    failure = CommandError("the freeze of \(section.hold.plan.mountPoints.joined(separator: ", ")) ended "
                        + "(freeze timeout \(Int(section.hold.timeout)) s) before the transaction could commit; nothing was changed")
                }
                if failure != nil {
                    for action in prepared.reversed() { action.abort() }
                } else {
                    // Frozen backups keep the freeze for their copy: it is theirs
                    // before they start, so the first to finish cannot miss it.
                    let frozenJobs = actions.compactMap { ($0 as? DriveBackupAction)?.job }
                        .filter { $0.work.consistency == .frozen }
                    if let section, !frozenJobs.isEmpty, !section.hold.plan.mountPoints.isEmpty {
                        let shared = SharedFreeze(section: section, jobs: frozenJobs, daemon: self)
                        for job in frozenJobs { job.freeze = shared }
                        handedOver = true
                    }
                    // Snapshots are made before any job starts to read them.
                    for action in prepared.reversed() where action is LVMSnapshotAction { action.commit() }
                    for action in prepared.reversed() where !(action is LVMSnapshotAction) { action.commit() }
                }
                for action in prepared.reversed() { action.clean() }
            }
            if let section, !handedOver { resume(section) }
            try saveAll(inUse: true)
            stopIdleTracking(actions)
            if let failure { throw failure }
        }
    }

    /// Devices left without bitmaps by a transaction's removes (or by an
    /// aborted add) stop being tracked, as after `block-dirty-bitmap-remove`.
    private func stopIdleTracking(_ actions: [TransactionAction]) {
        for case let action as BitmapAction in actions where action.type != "block-dirty-bitmap-clear" {
            guard let path = try? resolve(action.deviceName ?? ""), let n = node(path), n.bitmaps.bitmaps.isEmpty else { continue }
            try? stopTracking(path)
        }
    }
}

/// The `abort` action: fails in prepare, for testing the way back.
final class AbortAction: TransactionAction {
    var deviceName: String? { nil }
    func prepare() throws { throw CommandError("Transaction aborted using Abort action") }
    func abort() {}
    func commit() {}
}

/// A bitmap command inside a transaction. Prepare applies it and keeps the
/// device's bitmaps as they were; abort puts them back whole. Exact because the
/// runner holds the daemon lock, so no write was marked in between.
final class BitmapAction: TransactionAction {
    let type: String
    private let arguments: Arguments
    private unowned let daemon: Daemon
    private var node: Node?
    private var saved: BitmapSet?
    private var removed: DirtyBitmap?

    init(daemon: Daemon, type: String, arguments: Arguments) {
        self.daemon = daemon
        self.type = type
        self.arguments = arguments
    }

    var deviceName: String? { arguments.values["node"]?.stringValue }

    func prepare() throws {
        let a = arguments
        let keys: Set<String> = switch type {
        case "block-dirty-bitmap-add": ["node", "name", "granularity", "persistent", "disabled"]
        case "block-dirty-bitmap-merge": ["node", "target", "bitmaps"]
        default: ["node", "name"]
        }
        try a.allow(keys)
        let path = try daemon.resolve(a.string("node"))
        guard let node = daemon.node(path) else {
            throw CommandError("Cannot find device='\(path)' nor node-name='\(path)': it is not tracked")
        }
        self.node = node
        saved = node.bitmaps
        do {
            switch type {
            case "block-dirty-bitmap-add":
                let granularity = try a.optionalInt("granularity").map { UInt64(max(0, $0)) } ?? DirtyBitmap.defaultGranularity
                try node.bitmaps.add(name: a.string("name"), granularity: granularity,
                                     enabled: !(try a.optionalBool("disabled") ?? false),
                                     persistent: try a.optionalBool("persistent") ?? false)
            case "block-dirty-bitmap-remove": removed = try node.bitmaps.remove(a.string("name"))
            case "block-dirty-bitmap-clear": try node.bitmaps.clear(a.string("name"))
            case "block-dirty-bitmap-enable": try node.bitmaps.enable(a.string("name"))
            case "block-dirty-bitmap-disable": try node.bitmaps.disable(a.string("name"))
            default: try node.bitmaps.merge(try bitmapNames(a), into: a.string("target"))
            }
        } catch let e as BitmapError {
            node.bitmaps = saved!
            throw CommandError(e.message)
        }
    }

    func abort() {
        if let node, let saved { node.bitmaps = saved }
    }

    func commit() {
        guard let node else { return }
        if let removed {
            if removed.isPersistent { unlink(daemon.state.bitmapFile(node: node.path, name: removed.name)) }
            daemon.catalogBitmap(added: false, device: node.path, name: removed.name)
        } else if type == "block-dirty-bitmap-add", let name = arguments.values["name"]?.stringValue {
            daemon.catalogBitmap(added: true, device: node.path, name: name)
        }
    }
}

/// `drive-backup` as an action: in prepare the arguments are checked, the
/// bitmap is frozen under a successor and the job is created; the job starts
/// only in commit. Abort reclaims the bitmap and drops the job.
final class DriveBackupAction: TransactionAction {
    private let arguments: Arguments
    private unowned let daemon: Daemon
    private let group: JobGroup?
    private var node: Node?
    private var saved: BitmapSet?
    private(set) var job: Job?
    /// The transaction's snapshot of this device, which the job reads.
    var snapshot: LVMSnapshotAction?

    init(daemon: Daemon, arguments: Arguments, group: JobGroup?) {
        self.daemon = daemon
        self.arguments = arguments
        self.group = group
    }

    var deviceName: String? { arguments.values["device"]?.stringValue }

    func prepare() throws {
        do {
            let work = try BackupWork(arguments, daemon: daemon)
            if let snapshot {
                work.snapshot = snapshot
                work.deltaBase = work.previous.flatMap { snapshot.base(for: $0) }
                snapshot.attach(work)
            }
            let id = try arguments.optionalString("job-id") ?? work.device
            job = try daemon.jobs.create(id: id, work: work,
                                         autoFinalize: try arguments.optionalBool("auto-finalize") ?? true,
                                         autoDismiss: try arguments.optionalBool("auto-dismiss") ?? true,
                                         group: group ?? JobGroup(grouped: false))
            if work.bitmap != nil, let node = daemon.node(work.device) {
                self.node = node
                saved = node.bitmaps
                try work.freeze(in: node)
            }
            if work.consistency == .converge, let job {
                guard let node = daemon.node(work.device) else {
                    throw CommandError("x-consistency 'converge' needs \(work.device) to be tracked")
                }
                // From this point in time on, the writes the copy races with are recorded.
                let recorder = WriteRecorder(deviceSize: node.size, granularity: UInt64(work.options.clusterSize))
                node.recorders.append(recorder)
                work.driver = ConvergeDriver(daemon: daemon, job: job, node: node, recorder: recorder)
            }
        } catch {
            abort()
            throw error
        }
    }

    func abort() {
        if let node, let saved { node.bitmaps = saved }
        if let job {
            daemon.removeRecorder(of: job.work)
            daemon.jobs.discardCreated(job)
        }
        job = nil
    }

    var converges: Bool { arguments.values["x-consistency"]?.stringValue == "converge" }

    func commit() {
        if let job { daemon.jobs.start(job) }
    }
}
