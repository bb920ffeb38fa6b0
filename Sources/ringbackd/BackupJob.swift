import Backup
import BlockIO
import ControlProtocol
import DirtyBitmaps
import Foundation
import Images
import Jobs

/// One backup job's work (DESIGN §9): checked and frozen at its point in time
/// in a transaction's prepare, copied by the job's thread, and published or
/// discarded when the job is finalized. Nothing of it is visible as a restore
/// point before `commit` renames the image into place.
final class BackupWork: @unchecked Sendable {
    let device: String
    let deviceSize: UInt64
    let image: String
    let previous: String?
    /// The chain folder the image goes into, when the target is one.
    let chainDirectory: String?
    let sync: String
    let bitmap: String?
    let mode: BitmapSyncMode?
    let rescan: Bool
    let format: ImageFormatChoice
    let compression: Qcow2Writer.Compression
    let options: CopyOptions
    let force: Bool
    let onSourceError: ErrorPolicy
    let onTargetError: ErrorPolicy
    let consistency: ConsistencyMode
    /// Thresholds of `converge`.
    let converge: ConvergeOptions
    /// Set when the job starts a converging copy.
    var driver: ConvergeDriver?
    /// Set in prepare: an inconsistent bitmap re-armed by this rescan.
    private(set) var rearmed = false
    /// Set in prepare: the frozen parent, i.e. the granules an incremental copies.
    private(set) var frozen: DirtyBitmap?
    /// The copy's result, for the completion event and the catalog.
    var summary: JSONValue?
    /// The transaction's LVM snapshot of the device: the copy reads it.
    var snapshot: LVMSnapshotAction?
    /// A kept thin snapshot holding `previous`'s contents: the incremental's
    /// changes come from thin_delta against the new snapshot.
    var deltaBase: SnapshotRecords.Record?
    /// Set in run: how the changes were found, for the summary.
    private(set) var deltaBytes: UInt64?

    /// Parses and checks `drive-backup`'s arguments as QEMU does; no side effects.
    init(_ a: Arguments, daemon: Daemon) throws {
        try a.allow(["job-id", "device", "target", "format", "mode", "sync", "bitmap", "bitmap-mode", "speed",
                     "compress", "on-source-error", "on-target-error", "auto-finalize", "auto-dismiss", "x-perf",
                     "x-rescan", "x-previous", "x-consistency", "x-converge", "auto-complete"])
        device = try daemon.resolve(a.string("device"))
        let target = try a.string("target")
        sync = try a.string("sync")
        guard ["full", "incremental", "bitmap"].contains(sync) else {
            throw CommandError("Parameter 'sync' does not accept value '\(sync)' (full, incremental or bitmap)")
        }
        bitmap = try a.optionalString("bitmap")
        var mode = try a.optionalString("bitmap-mode").map { s -> BitmapSyncMode in
            guard let m = BitmapSyncMode(rawValue: s) else { throw CommandError("Parameter 'bitmap-mode' does not accept value '\(s)'") }
            return m
        }
        rescan = try a.optionalBool("x-rescan") ?? false
        if sync != "full" && bitmap == nil {
            throw CommandError("must provide a valid bitmap name for '\(sync)' sync mode")
        }
        if sync == "incremental" {
            if let m = mode, m != .onSuccess {
                throw CommandError("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
            }
            mode = .onSuccess
        }
        if bitmap != nil && mode == nil { throw CommandError("Bitmap sync mode must be given when providing a bitmap") }
        if sync == "full" && mode == .never {
            throw CommandError("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'")
        }
        if bitmap == nil && mode != nil { throw CommandError("Cannot specify bitmap sync mode without a bitmap") }
        self.mode = mode
        if let bitmap {
            guard let n = daemon.node(device), n.bitmaps[bitmap] != nil else {
                throw CommandError("Dirty bitmap '\(bitmap)' not found")
            }
        }
        deviceSize = daemon.node(device)?.size ?? 0

        // Where the image goes: a chain folder, or a file (a full backup) with
        // x-previous naming the image an incremental builds on.
        let modeArg = try a.optionalString("mode") ?? "absolute-paths"
        guard ["existing", "absolute-paths"].contains(modeArg) else {
            throw CommandError("Parameter 'mode' does not accept value '\(modeArg)' (existing or absolute-paths)")
        }
        if modeArg == "existing" && !FileManager.default.fileExists(atPath: target) {
            throw CommandError("Could not open '\(target)': No such file or directory (mode 'existing')")
        }
        chainDirectory = ChainDirectory.isDirectory(target) ? target : nil
        if ChainDirectory.isDirectory(target) {
            let chain = ChainDirectory(path: target)
            if sync == "full" {
                image = chain.next(.full); previous = nil
            } else {
                guard let newest = chain.newest else {
                    throw CommandError("no full backup in \(target) for an incremental to build on; take a full backup first")
                }
                image = chain.next(.inc); previous = newest
            }
        } else {
            image = target
            previous = sync == "full" ? nil : try a.optionalString("x-previous")
            if sync != "full" && previous == nil {
                throw CommandError("an incremental backup needs 'target' to be the chain's folder, or 'x-previous' naming the image it builds on")
            }
        }
        force = modeArg == "existing"

        let formatName = try a.optionalString("format") ?? "qcow2"
        guard let f = ImageFormatChoice(rawValue: formatName) else {
            throw CommandError("Parameter 'format' does not accept value '\(formatName)' (qcow2 or raw)")
        }
        format = f
        if sync != "full" && format != .qcow2 { throw CommandError("an incremental backup is a qcow2 overlay; 'format' must be qcow2") }
        compression = try a.optionalBool("compress") == true ? .zstd : .none
        if compression != .none && format != .qcow2 { throw CommandError("'compress' needs format qcow2") }

        var options = CopyOptions()
        if let speed = try a.optionalInt("speed") {
            guard speed >= 0 else { throw CommandError("Parameter 'speed' expects a non-negative value") }
            options.speedLimit = UInt64(speed)
        }
        if let perf = try a.optionalObject("x-perf") {
            let p = Arguments(values: perf)
            try p.allow(["max-workers", "max-chunk", "use-copy-range"])
            if let w = try p.optionalInt("max-workers") { options.queueDepth = Int(w) }
            if let c = try p.optionalInt("max-chunk"), c > 0 { options.chunkSize = Int(c) }
        }
        do { try options.validate() } catch { throw CommandError("\(error)") }
        self.options = options
        let consistencyName = try a.optionalString("x-consistency") ?? "none"
        guard let c = ConsistencyMode(rawValue: consistencyName) else {
            throw CommandError("Parameter 'x-consistency' does not accept value '\(consistencyName)' (frozen, converge or none)")
        }
        consistency = c
        var converge = ConvergeOptions()
        converge.autoComplete = try a.optionalBool("auto-complete") ?? false
        if let o = try a.optionalObject("x-converge") {
            let p = Arguments(values: o)
            try p.allow(["threshold", "max-passes"])
            if let t = try p.optionalInt("threshold") {
                guard t >= 0 else { throw CommandError("Parameter 'threshold' expects a non-negative value") }
                converge.threshold = UInt64(t)
            }
            if let m = try p.optionalInt("max-passes") {
                guard m >= 1 else { throw CommandError("Parameter 'max-passes' expects a value of at least 1") }
                converge.maxPasses = Int(m)
            }
        }
        self.converge = converge
        if c == .converge && compression != .none {
            throw CommandError("x-consistency 'converge' rewrites clusters between passes and cannot be combined with 'compress'")
        }
        onSourceError = try Self.policy(a, "on-source-error")
        onTargetError = try Self.policy(a, "on-target-error")

        // QEMU's last checks: the target must not be the source or on it.
        do {
            let source = try BlockFile(path: device, mode: .read, direct: false)
            _ = try TargetCheck.validate(source: source, target: image, force: force)
        } catch let e as BackupError {
            throw CommandError(e.description)
        }
    }

    private static func policy(_ a: Arguments, _ key: String) throws -> ErrorPolicy {
        guard let s = try a.optionalString(key) else { return .report }
        guard let p = ErrorPolicy(rawValue: s) else {
            throw CommandError("Parameter '\(key)' does not accept value '\(s)' (report, ignore, stop or enospc)")
        }
        return p
    }

    /// Freezes the bitmap at the transaction's point in time: a successor takes
    /// the writes from now on. An inconsistent bitmap is refused, unless a
    /// rescan re-arms it. Runs under the daemon's lock, after the barrier.
    func freeze(in node: Node) throws {
        guard let name = bitmap else { return }
        guard let b = node.bitmaps[name] else { throw CommandError("Dirty bitmap '\(name)' not found") }
        do {
            if b.isInconsistent {
                guard (rescan || deltaBase != nil) && sync != "full" else {
                    throw CommandError("Bitmap '\(name)' on \(device) is inconsistent: writes to the device may have been "
                                       + "missed (lost trace events, a crash, or a reboot). Run the incremental with --rescan "
                                       + "(x-rescan) to re-read the whole device against the previous backup's digests.")
                }
                // Re-arm: a fresh bitmap records from now; the rescan (or
                // thin_delta since the kept snapshot) covers everything before.
                let old = try node.bitmaps.remove(name)
                try node.bitmaps.add(name: name, granularity: old.granularity, enabled: true, persistent: old.isPersistent)
                rearmed = true
            } else {
                frozen = try node.bitmaps.createSuccessor(name)
            }
        } catch let e as BitmapError {
            throw CommandError(e.message)
        }
    }

    /// The copy, on the job's thread. The image stays `.partial` until `publish`.
    func run(control: CopyControl) throws -> JSONValue {
        if bitmap != nil && mode == .always { control.recordCompletedChunks() }
        let source = try snapshot?.source() ?? device
        var nextPass: (@Sendable () throws -> [Extent]?)?
        if let driver { nextPass = { try driver.nextPass() } }
        if sync == "full" {
            var request = BackupRequest(device: source, target: image)
            request.format = format
            request.compression = compression
            request.options = options
            request.force = force
            request.publishLater = true
            request.nextPass = nextPass
            return withConvergeReport(try JSONValue.from(FullBackup.run(request, control: control, warn: warn)))
        }
        var changed = rescan ? nil : frozen.map { Array($0.dirtyExtents) } ?? []
        if let base = deltaBase, let snapshot, let listed = changed {
            // Changes since the kept snapshot, with what the bitmap saw (if it
            // is consistent) on top: over-copying is safe, missing is not.
            var union = try DirtyBitmap(name: "thin-delta", deviceSize: deviceSize, granularity: UInt64(options.clusterSize))
            let delta = try snapshot.delta(from: base)
            for e in delta + listed { union.setDirty(offset: e.offset, length: min(e.length, deviceSize - min(e.offset, deviceSize))) }
            deltaBytes = delta.reduce(0) { $0 + $1.length }
            changed = Array(union.dirtyExtents)
        }
        var request = IncrementalRequest(device: source, previousImage: previous!, target: image, changed: changed)
        request.options = options
        request.compression = compression
        request.publishLater = true
        request.nextPass = nextPass
        return withConvergeReport(try JSONValue.from(IncrementalBackup.run(request, control: control, warn: warn)))
    }

    /// The copy engine's warnings (io_uring unavailable: pread/pwrite instead).
    private func warn(_ message: String) {
        logger.warning("\(message)", metadata: ["device": "\(device)", "image": "\(image)"])
    }

    private func withConvergeReport(_ summary: JSONValue) -> JSONValue {
        guard var o = summary.objectValue else { return summary }
        if let driver { o["converge"] = driver.report }
        if let snapshot { o["x-snapshot"] = .string(snapshot.snapshot?.fullName ?? "") }
        if let deltaBytes { o["x-thin-delta-bytes"] = .int(Int64(deltaBytes)) }
        return .object(o)
    }

    /// The job succeeded and is finalized: the image gets its name.
    func publish() throws {
        if format == .raw && !FileManager.default.fileExists(atPath: PendingImage.partialPath(image)) { return }
        try PendingImage.publish(image: image)
    }

    /// The job failed or was cancelled: the partial image goes away.
    func discard() { PendingImage.discard(image: image) }

    /// Ends the bitmap's freeze by QEMU's sync rule. A failed `always` job
    /// merges back what it never copied: the planned granules minus the chunks
    /// the engine completed.
    func endFreeze(in node: Node, succeeded: Bool, completed: [Extent]) {
        guard let name = bitmap, let mode else { return }
        if rearmed {
            // A failed rescan proves nothing about the writes before it.
            if !succeeded, var b = node.bitmaps[name], !b.isBusy {
                _ = try? node.bitmaps.remove(name)
                b.markInconsistent()
                try? node.bitmaps.add(b)
            }
            return
        }
        var uncopied: DirtyBitmap?
        if !succeeded && mode == .always, let frozen {
            var u = frozen
            if sync == "full" {
                u.isEnabled = true
                u.clear()
                u.setDirty(offset: 0, length: deviceSize)
            }
            for e in completed { u.reset(offset: e.offset, length: e.length) }
            uncopied = u
        }
        do {
            try node.bitmaps.finish(name, jobSucceeded: succeeded, mode: mode, uncopied: uncopied)
        } catch {
            logger.error("cannot end the freeze of bitmap '\(name)' on \(device): \(error)",
                         metadata: ["device": "\(device)", "bitmap": "\(name)"])
        }
    }
}

/// The point in time of a backup (DESIGN §11), its `x-consistency`.
enum ConsistencyMode: String {
    /// The filesystems stay frozen for the whole copy.
    case frozen
    /// A live copy that re-copies what changed, then a short final freeze.
    case converge
    /// A live copy: crash-inconsistent, and recorded so.
    case none

    /// How the catalog names the point in time of such a backup.
    var catalogName: String {
        switch self {
        case .frozen: "frozen"
        case .converge: "converged"
        case .none: "crash-inconsistent"
        }
    }
}
