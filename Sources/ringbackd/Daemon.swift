import Backup
import BlockDevices
import Catalog
import Images
import BlockIO
import ControlProtocol
import DirtyBitmaps
import Foundation
import WriteTracking

/// ringbackd's state: the tracked devices with their bitmaps, the trackers
/// that feed them, and the commands that act on them. One lock guards it;
/// tracker threads take it to mark writes, commands take it for their
/// bookkeeping but never across a copy.
final class Daemon: @unchecked Sendable {
    let state: StateFiles
    let bootIDPath: String
    let bufferKiB: Int
    /// Recursive: a transaction holds it from its first prepare to its last
    /// commit and calls the same methods that commands call alone.
    private let lock = NSRecursiveLock()
    private var nodes: [String: Node] = [:]
    private var trackers: [String: WriteTracker] = [:]   // disk path → tracker
    private var lossCounts: [String: UInt64] = [:]
    /// Set by the server once it runs, so commands can emit events.
    var emit: (String, JSONValue) -> Void = { _, _ in }
    /// The jobs; their lock is always taken before this daemon's.
    private(set) lazy var jobs = JobList(daemon: self)
    /// Hooks, freeze timeout and watchdog (set from the options before start).
    var quiesceSettings = QuiesceSettings()
    /// The backup catalog (state-dir/catalog.db).
    private(set) var catalog: Catalog?
    /// The configuration's backup plans and their scheduler (set before the server starts).
    var plans: PlanScheduler?

    init(stateDirectory: String, bootIDPath: String, bufferKiB: Int) {
        state = StateFiles(root: stateDirectory)
        self.bootIDPath = bootIDPath
        self.bufferKiB = bufferKiB
    }

    var bootID: String { currentBootID(from: bootIDPath) }

    /// The tracked devices and their bitmaps, if the lock comes free within
    /// `timeout` seconds: the service watchdog's sign that the daemon lives
    /// (the trackers need this lock for every write they mark).
    func trackingFigures(within timeout: TimeInterval) -> (devices: Int, bitmaps: Int)? {
        guard lock.lock(before: Date(timeIntervalSinceNow: timeout)) else { return nil }
        defer { lock.unlock() }
        return (nodes.count, nodes.values.reduce(0) { $0 + $1.bitmaps.bitmaps.count })
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// The tracked devices and their disks' trackers under the lock, or nil
    /// when it stays taken past `deadline` (for the metrics, Metrics.swift).
    func withTrackedDevices<T>(before deadline: Date, _ body: ([Node], [String: WriteTracker]) -> T) -> T? {
        guard lock.lock(before: deadline) else { return nil }
        defer { lock.unlock() }
        return body(Array(nodes.values), trackers)
    }

    // MARK: start and stop

    /// Re-attaches to the devices tracked before a restart and loads their
    /// persistent bitmaps; every doubt makes a bitmap inconsistent.
    func restore() throws {
        try FileManager.default.createDirectory(atPath: state.bitmaps, withIntermediateDirectories: true)
        catalog = try Catalog(stateDirectory: state.root)
        failInterruptedBackups()
        SnapshotRecords.removeLeftovers(state)
        finishInterruptedMerges()
        let saved = state.loadTracked()
        lossCounts = saved.lossCounts
        for path in saved.nodes {
            do {
                // Every device of a disk is tracked before its reader starts, so
                // that events buffered while no daemon ran reach all of them.
                let reattached = try startTracking(path, loadBitmaps: true, startReader: false)
                if !reattached {
                    // The tracefs instance is gone (a reboot, or someone removed
                    // it): writes since the last daemon stopped were not seen.
                    locked { nodes[path]?.bitmaps.markInconsistent() }
                    logger.warning("tracking of \(path) restarted without its tracefs instance: its bitmaps are inconsistent",
                                   metadata: ["device": "\(path)"])
                }
            } catch {
                logger.error("cannot resume tracking \(path): \(error); its bitmap files are kept", metadata: ["device": "\(path)"])
            }
        }
        // Drain what the instances buffered while no daemon ran, and learn of losses.
        for tracker in locked({ Array(trackers.values) }) { tracker.start() }
        for disk in locked({ Array(trackers.keys) }) { try? barrier(disk: disk) }
        try saveAll(inUse: true)
        for node in locked({ Array(nodes.values) }) {
            for b in node.bitmaps.bitmaps where b.isInconsistent {
                logger.warning("bitmap '\(b.name)' on \(node.path) is inconsistent; an incremental from it needs --rescan",
                               metadata: ["device": "\(node.path)", "bitmap": "\(b.name)"])
            }
        }
    }

    /// A clean stop: drain every tracker, save every persistent bitmap with its
    /// in-use flag cleared, and leave the tracefs instances recording so that
    /// the next daemon re-attaches without a gap.
    func shutdown() {
        // Running jobs are cancelled: their images are discarded and their
        // bitmaps reclaimed, so the next daemon starts from a known state.
        for job in jobs.active {
            logger.notice("cancelling job '\(job.id)' (\(job.work.device)) for shutdown",
                          metadata: ["job": "\(job.id)", "device": "\(job.work.device)"])
            try? jobs.cancel(job.id)
        }
        let deadline = Date().addingTimeInterval(30)
        while !jobs.active.isEmpty && Date() < deadline { usleep(10_000) }
        for disk in locked({ Array(trackers.keys) }) { try? barrier(disk: disk) }
        try? saveAll(inUse: false)
        let all = locked { () -> [WriteTracker] in
            defer { trackers = [:] }
            return Array(trackers.values)
        }
        for t in all { try? t.stop(removeInstance: false) }
    }

    func saveAll(inUse: Bool) throws {
        try locked {
            for (path, node) in nodes {
                for b in node.bitmaps.bitmaps where b.isPersistent {
                    try node.bitmaps.save(b.name, to: state.bitmapFile(node: path, name: b.name),
                                          identity: node.identity, bootID: bootID, inUse: inUse)
                }
            }
            try state.saveTracked(StateFiles.Tracked(nodes: nodes.keys.sorted(), lossCounts: lossCounts))
        }
    }

    // MARK: tracking

    /// Resolves a node name (path or symlink) to the device path used as key.
    /// An LV's names (VG/LV, /dev/VG/LV, /dev/mapper/VG-LV, its /dev/dm-N)
    /// all become its dm node as LVM names it, /dev/mapper/VG-LV: the same on
    /// every host, with or without udev, and across reboots (dm-N is not).
    func resolve(_ node: String) throws -> String {
        do {
            if let lv = try LVM().node(for: node) { return lv }
        } catch {
            throw CommandError("\(error)")
        }
        let url = URL(fileURLWithPath: node).resolvingSymlinksInPath()
        var st = stat()
        guard stat(url.path, &st) == 0 else { throw CommandError("Cannot find device='\(node)' nor node-name='\(node)'") }
        guard st.st_mode & S_IFMT == S_IFBLK else { throw CommandError("'\(node)' is not a block device") }
        return url.path
    }

    /// Starts tracking a device (idempotent). Returns whether its disk's
    /// tracefs instance already existed (a re-attach).
    @discardableResult
    func startTracking(_ path: String, loadBitmaps: Bool = false, startReader: Bool = true) throws -> Bool {
        if let _ = locked({ nodes[path] }) { return true }
        let probe = DeviceProbe()
        let info = try probe.device(at: path)
        let diskInfo = try info.partition.map { try probe.device(named: $0.parent) } ?? info
        let disk = diskInfo.path
        let tracker: WriteTracker
        var reattached = true
        if let t = locked({ trackers[disk] }) {
            tracker = t
        } else {
                        // A saved loss count continues an earlier tracker; none means a fresh start.
            tracker = try WriteTracker(disk: disk, bufferKiB: bufferKiB, lossBaseline: locked { lossCounts[disk] }) {
                [weak self] device, extent in
                self?.record(device.path, extent)
            }
            reattached = !tracker.createdInstance
            locked { trackers[disk] = tracker }
        }
        let tracked = try tracker.track(device: path)
        let node = Node(path: path, size: info.size, identity: Node.identity(of: info, disk: diskInfo), disk: disk,
                        tracked: tracked, bitmaps: BitmapSet(device: path, deviceSize: info.size))
        if loadBitmaps { loadPersistentBitmaps(into: node) }
        locked { nodes[path] = node }
        if startReader { tracker.start() }
        return reattached
    }

    private func loadPersistentBitmaps(into node: Node) {
        let prefix = URL(fileURLWithPath: state.bitmapFile(node: node.path, name: "")).lastPathComponent
            .replacingOccurrences(of: ".bitmap", with: "")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: state.bitmaps)) ?? []
        for file in files.sorted() where file.hasPrefix(prefix) && file.hasSuffix(".bitmap") {
            let path = state.bitmaps + "/" + file
            do {
                // The loader marks a bitmap inconsistent for every doubt; say which.
                let loaded = try DirtyBitmap.load(from: path, expecting: node.identity, bootID: bootID)
                for doubt in loaded.doubts {
                    logger.warning("bitmap '\(loaded.bitmap.name)' on \(node.path) is inconsistent: \(doubt)",
                                   metadata: ["device": "\(node.path)", "bitmap": "\(loaded.bitmap.name)"])
                }
                try node.bitmaps.add(loaded.bitmap)
            } catch {
                // A device replaced by another: the bitmap is refused outright.
                logger.error("bitmap file \(path) not loaded: \(error)", metadata: ["device": "\(node.path)", "file": "\(path)"])
            }
        }
    }

    private func record(_ path: String, _ extent: Extent) {
        locked {
            guard let node = nodes[path] else { return }
            node.writeEvents &+= 1
            node.bitmaps.mark(offset: extent.offset, length: extent.length)
            for r in node.recorders { r.bitmap.mark(offset: extent.offset, length: extent.length) }
        }
    }

    /// Drains the disk's tracker up to now; lost events make every bitmap of
    /// the disk inconsistent.
    func barrier(disk: String) throws {
        guard let tracker = locked({ trackers[disk] }) else { return }
        let result = try tracker.barrier()
        locked {
            lossCounts[disk] = result.lossCount
            if result.lostEvents {
                for node in nodes.values where node.disk == disk {
                    node.bitmaps.markInconsistent()
                }
            }
        }
        if result.lostEvents {
            emit("X_TRACKER_LOST_EVENTS", .object(["disk": .string(disk)]))
        }
    }

    func stopTracking(_ path: String) throws {
        let node = try locked { () throws -> Node in
            guard let node = nodes[path] else { throw CommandError("\(path) is not tracked") }
            guard node.bitmaps.bitmaps.isEmpty else {
                throw CommandError("\(path) still has dirty bitmaps (\(node.bitmaps.bitmaps.map(\.name).joined(separator: ", "))); remove them first")
            }
            nodes[path] = nil
            return node
        }
        let tracker = locked { trackers[node.disk] }
        tracker?.untrack(node.tracked.id)
        let others = locked { nodes.values.contains { $0.disk == node.disk } }
        if !others, let tracker {
            try tracker.stop(removeInstance: true)
            locked { trackers[node.disk] = nil; lossCounts[node.disk] = nil }
        }
        try saveAll(inUse: true)
    }

    // MARK: bitmaps

    /// Runs a bitmap operation on a node under the lock and saves persistent
    /// bitmaps afterwards. BitmapError's QEMU text becomes the reply.
    func withBitmaps<T>(_ node: String, _ body: (inout BitmapSet) throws -> T) throws -> T {
        let path = try resolve(node)
        return try locked { () throws -> T in
            guard let n = nodes[path] else { throw CommandError("Cannot find device='\(node)' nor node-name='\(node)': it is not tracked") }
            let before = n.bitmaps
            do {
                // On a copy, so that a body that fails part-way (remove, then
                // add) leaves the device's bitmaps as they were.
                var bitmaps = n.bitmaps
                let r = try body(&bitmaps)
                n.bitmaps = bitmaps
                // A change that cannot be saved is not made: the set on disk
                // and in memory stay one.
                try saveAll(inUse: true)
                return r
            } catch let e as BitmapError {
                n.bitmaps = before
                throw CommandError(e.message)
            } catch {
                n.bitmaps = before
                throw CommandError("cannot save the bitmaps of \(path): \(error); nothing was changed")
            }
        }
    }

    func removeBitmapFile(node: String, name: String) {
        unlink(state.bitmapFile(node: (try? resolve(node)) ?? node, name: name))
    }

    /// `query-block`: every tracked device with its bitmaps.
    func queryBlock() -> JSONValue {
        locked {
            .array(nodes.values.sorted { $0.path < $1.path }.map { node in
                .object([
                    "device": .string(node.path), "node-name": .string(node.path),
                    "size": .int(Int64(node.size)),
                    "dirty-bitmaps": .array(node.bitmaps.bitmaps.map { b in
                        .object([
                            "name": .string(b.name), "count": .int(Int64(b.count)),
                            "granularity": .int(Int64(b.granularity)), "recording": .bool(b.isEnabled),
                            "busy": .bool(b.isBusy), "persistent": .bool(b.isPersistent),
                            "inconsistent": .bool(b.isInconsistent),
                        ])
                    }),
                ])
            })
        }
    }

    func node(_ path: String) -> Node? { locked { nodes[path] } }

    /// Stops a converging job's private write record.
    func removeRecorder(of work: BackupWork) {
        guard let recorder = work.driver?.recorder else { return }
        locked { nodes[work.device]?.recorders.removeAll { $0 === recorder } }
    }

    /// Ends a finished job's bitmap freeze and saves the bitmaps.
    func endFreeze(of work: BackupWork, succeeded: Bool, completed: [Extent]) {
        guard work.bitmap != nil else { return }
        locked {
            guard let node = nodes[work.device] else { return }
            work.endFreeze(in: node, succeeded: succeeded, completed: completed)
        }
        do { try saveAll(inUse: true) } catch {
            logger.error("cannot save bitmaps: \(error)", metadata: ["device": "\(work.device)", "bitmap": "\(work.bitmap ?? "")"])
        }
    }

    // MARK: catalog

    /// Records a job's backup as running. A catalog that cannot be written is
    /// logged, not fatal to the backup: the image and its digests stand alone.
    func catalogStarted(_ job: Job) {
        guard let catalog else { return }
        let w = job.work
        do {
            let size = node(w.device)?.size ?? (try? BlockFile(path: w.device, mode: .read, direct: false).size)
            try catalog.recordDevice(path: w.device, identity: node(w.device).map { "\($0.identity)" }, size: size)
            let parent = try w.previous.flatMap { try catalog.backup(image: $0)?.id }
            let kind: BackupKind = w.sync == "full" ? .full : .incremental
            let record = try catalog.beginBackup(BackupStart(
                jobID: job.id, device: w.device, chain: w.chainDirectory, kind: kind, sync: SyncMode(rawValue: w.sync),
                bitmap: w.bitmap, image: w.image, format: w.format.rawValue,
                consistency: Consistency(rawValue: w.consistency.catalogName), parentID: parent))
            job.catalogID = record.id
        } catch {
            logger.error("catalog: cannot record the start of job '\(job.id)': \(error)",
                         metadata: ["job": "\(job.id)", "device": "\(w.device)", "image": "\(w.image)"])
        }
    }

    /// Records how a job's backup ended: complete with its figures and content
    /// digest, or failed/cancelled with the reason (never restorable).
    func catalogFinished(_ job: Job, succeeded: Bool) {
        guard let catalog, let id = job.catalogID else { return }
        do {
            if succeeded {
                let s = job.work.summary.map { $0["backup"] ?? $0 } ?? .null
                var st = stat()
                let imageSize = stat(job.work.image, &st) == 0 ? UInt64(st.st_size) : nil
                let digest = (try? DigestFile(contentsOf: DigestFile.path(forImage: job.work.image)))?.contentDigest
                try catalog.completeBackup(id: id, figures: BackupFigures(
                    bytesRead: UInt64(s["bytes_read"]?.intValue ?? 0),
                    bytesWritten: UInt64(s["bytes_written"]?.intValue ?? 0),
                    imageSize: imageSize, imageDigest: digest))
            } else {
                try catalog.failBackup(id: id, status: job.errorMessage == nil ? .cancelled : .failed,
                                       error: job.errorMessage ?? "cancelled")
            }
        } catch {
            logger.error("catalog: cannot record the end of job '\(job.id)': \(error)",
                         metadata: ["job": "\(job.id)", "device": "\(job.work.device)", "backup": "\(id)"])
        }
    }

    /// Keeps the catalog's list of bitmaps in step with the daemon's.
    func catalogBitmap(added: Bool, device path: String, name: String) {
        guard let catalog else { return }
        do {
            if added, let n = node(path), let b = n.bitmaps[name] {
                try catalog.recordDevice(path: path, identity: "\(n.identity)", size: n.size)
                try catalog.recordBitmap(device: path, name: name, granularity: b.granularity, persistent: b.isPersistent)
            } else if !added {
                try catalog.removeBitmap(device: path, name: name)
            }
        } catch {
            logger.error("catalog: cannot record bitmap '\(name)' on \(path): \(error)",
                         metadata: ["device": "\(path)", "bitmap": "\(name)"])
        }
    }

    /// At start: backups a killed daemon left running are failed in the
    /// catalog, and their partial images removed.
    func failInterruptedBackups() {
        guard let catalog else { return }
        do {
            for record in try catalog.markInterrupted() {
                PendingImage.discard(image: record.image)
                logger.warning("backup \(record.id) of \(record.device) (\(record.image)) was interrupted by a daemon stop; marked failed",
                               metadata: ["backup": "\(record.id)", "device": "\(record.device)", "image": "\(record.image)"])
            }
        } catch {
            logger.error("catalog: cannot mark interrupted backups: \(error)")
        }
    }
}
