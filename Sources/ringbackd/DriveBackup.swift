import Backup
import BlockIO
import ControlProtocol
import DirtyBitmaps
import Foundation
import Images

extension Daemon {
    /// `drive-backup`, run to completion before the reply (the job model and
    /// its events come with the transactions work). Validation follows QEMU's
    /// (DESIGN §9); a bitmap is frozen under a successor for the copy and then
    /// synced or reclaimed by the sync rule of its `bitmap-mode`.
    func driveBackup(_ a: Arguments) throws -> JSONValue {
        let device = try resolve(a.string("device"))
        let target = try a.string("target")
        let sync = try a.string("sync")
        guard ["full", "incremental", "bitmap"].contains(sync) else {
            throw CommandError("Parameter 'sync' does not accept value '\(sync)' (full, incremental or bitmap)")
        }
        let bitmapName = try a.optionalString("bitmap")
        var mode = try a.optionalString("bitmap-mode").map { s -> BitmapSyncMode in
            guard let m = BitmapSyncMode(rawValue: s) else {
                throw CommandError("Parameter 'bitmap-mode' does not accept value '\(s)'")
            }
            return m
        }
        let rescan = try a.optionalBool("x-rescan") ?? false
        if sync != "full" && bitmapName == nil {
            throw CommandError("must provide a valid bitmap name for '\(sync)' sync mode")
        }
        if sync == "incremental" {
            if let m = mode, m != .onSuccess {
                throw CommandError("Bitmap sync mode must be 'on-success' when using sync mode 'incremental'")
            }
            mode = .onSuccess
        }
        if bitmapName != nil && mode == nil {
            throw CommandError("Bitmap sync mode must be given when providing a bitmap")
        }
        if sync == "full" && mode == .never {
            throw CommandError("Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'")
        }
        if bitmapName == nil && mode != nil {
            throw CommandError("Cannot specify bitmap sync mode without a bitmap")
        }
        if let bitmapName {
            guard let n = node(device), n.bitmaps[bitmapName] != nil else {
                throw CommandError("Dirty bitmap '\(bitmapName)' not found")
            }
        }

        // Where the image goes: a chain folder, or a file (a full backup) with
        // x-previous naming the image an incremental builds on.
        let image: String, previous: String?
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

        var options = CopyOptions()
        if let speed = try a.optionalInt("speed") { options.speedLimit = UInt64(max(0, speed)) }
        let format = try a.optionalString("format") ?? "qcow2"
        guard let formatChoice = ImageFormatChoice(rawValue: format) else {
            throw CommandError("Parameter 'format' does not accept value '\(format)' (qcow2 or raw)")
        }

        // Freeze the bitmap at this point in time.
        var changed: [Extent]? = nil
        var rearm = false
        if let name = bitmapName {
            try barrier(disk: node(device)!.disk)
            let bitmap = node(device)!.bitmaps[name]!
            if bitmap.isInconsistent {
                guard rescan && sync != "full" else {
                    throw CommandError("Bitmap '\(name)' on \(device) is inconsistent: writes to the device may have been "
                                       + "missed (lost trace events, a crash, or a reboot). Run the incremental with --rescan "
                                       + "(x-rescan) to re-read the whole device against the previous backup's digests.")
                }
                // Re-arm: a fresh bitmap records from now; the rescan covers everything before.
                try withBitmaps(device) { set in
                    let old = try set.remove(name)
                    try set.add(name: name, granularity: old.granularity, enabled: true, persistent: old.isPersistent)
                }
                rearm = true
            } else {
                let parent = try withBitmaps(device) { try $0.createSuccessor(name) }
                if sync != "full" && !rescan { changed = Array(parent.dirtyExtents) }
            }
        }

        let started = Date()
        var outcome: Result<JSONValue, Error>
        do {
            if sync == "full" {
                var request = BackupRequest(device: device, target: image)
                request.format = formatChoice
                request.options = options
                outcome = .success(try JSONValue.from(FullBackup.run(request)))
            } else {
                var request = IncrementalRequest(device: device, previousImage: previous!, target: image, changed: changed)
                request.options = options
                outcome = .success(try JSONValue.from(IncrementalBackup.run(request)))
            }
        } catch {
            outcome = .failure(error)
        }
        let succeeded = (try? outcome.get()) != nil
        if let name = bitmapName, let mode {
            if rearm {
                if !succeeded { try? withBitmaps(device) { set in
                    var b = try set.remove(name)
                    b.markInconsistent()
                    try set.add(b)
                } }
            } else {
                _ = try withBitmaps(device) { try $0.finish(name, jobSucceeded: succeeded, mode: mode) }
            }
        }
        var event: [String: JSONValue] = ["device": .string(device), "type": .string("backup"),
                                          "len": .int(Int64(node(device)?.size ?? 0)), "speed": .int(Int64(options.speedLimit)),
                                          "x-seconds": .double(Date().timeIntervalSince(started))]
        switch outcome {
        case .success(let summary):
            event["offset"] = event["len"]
            emit("BLOCK_JOB_COMPLETED", .object(event))
            return summary
        case .failure(let error):
            event["offset"] = .int(0)
            event["error"] = .string("\(error)")
            emit("BLOCK_JOB_COMPLETED", .object(event))
            throw CommandError("backup of \(device) failed: \(error)")
        }
    }
}
