import Backup
import BlockIO
import Catalog
import ControlProtocol
import DirtyBitmaps
import Foundation
import Images

/// The QMP commands ringbackd answers (DESIGN §12), as one table.
extension Daemon {
    static let commands = [
        "qmp_capabilities", "query-version", "query-commands", "query-block",
        "block-dirty-bitmap-add", "block-dirty-bitmap-remove", "block-dirty-bitmap-clear",
        "block-dirty-bitmap-enable", "block-dirty-bitmap-disable", "block-dirty-bitmap-merge",
        "drive-backup", "transaction", "query-jobs", "query-block-jobs",
        "job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize", "job-dismiss",
        "block-job-pause", "block-job-resume", "block-job-cancel", "block-job-complete", "block-job-finalize",
        "block-job-dismiss", "block-job-set-speed",
        "x-track-start", "x-track-stop", "x-tracker-barrier", "x-verify", "x-restore",
        "x-query-backups", "x-query-backup", "x-query-plans", "x-plan-run", "x-chain-merge", "x-chain-retain",
    ]

    func handle(_ command: String, _ a: Arguments) throws -> JSONValue {
        switch command {
        case "query-version":
            return .object(["qemu": .object(["major": .int(Int64(RingbackVersion.major)),
                                             "minor": .int(Int64(RingbackVersion.minor)),
                                             "micro": .int(Int64(RingbackVersion.micro))]),
                            "package": .string("ringback \(RingbackVersion.string)")])
        case "query-commands":
            return .array(Self.commands.map { .object(["name": .string($0)]) })
        case "query-block":
            return queryBlock()
        case "x-track-start":
            try startTracking(try resolve(a.string("node")))
            try barrier(disk: node(try resolve(a.string("node")))!.disk)
            return .object([:])
        case "x-track-stop":
            try stopTracking(try resolve(a.string("node")))
            return .object([:])
        case "x-tracker-barrier":
            let path = try resolve(a.string("node"))
            guard let n = node(path) else { throw CommandError("\(path) is not tracked") }
            try barrier(disk: n.disk)
            return .object([:])
        case "block-dirty-bitmap-add":
            let path = try resolve(a.string("node"))
            // Adding the first bitmap starts tracking the device (DESIGN §7).
            if node(path) == nil { try startTracking(path) }
            let name = try a.string("name")
            try a.allow(["node", "name", "granularity", "persistent", "disabled"])
            // Negative values get QEMU's range message rather than a trap.
            let granularity = try a.optionalInt("granularity").map { UInt64(max(0, $0)) } ?? DirtyBitmap.defaultGranularity
            let persistent = try a.optionalBool("persistent") ?? false
            let disabled = try a.optionalBool("disabled") ?? false
            try barrier(disk: node(path)!.disk)   // writes before the add do not count
            _ = try withBitmaps(path) { try $0.add(name: name, granularity: granularity, enabled: !disabled, persistent: persistent) }
            catalogBitmap(added: true, device: path, name: name)
            return .object([:])
        case "block-dirty-bitmap-remove":
            let name = try a.string("name")
            let path = try resolve(a.string("node"))
            let removed = try withBitmaps(path) { try $0.remove(name) }
            if removed.isPersistent { removeBitmapFile(node: path, name: name) }
            catalogBitmap(added: false, device: path, name: name)
            // Removing the last bitmap stops tracking and removes the instance (DESIGN §7).
            if node(path)?.bitmaps.bitmaps.isEmpty == true { try stopTracking(path) }
            return .object([:])
        case "block-dirty-bitmap-clear":
            let path = try resolve(a.string("node"))
            if let n = node(path) { try barrier(disk: n.disk) }
            let name = try a.string("name")
            try withBitmaps(path) { try $0.clear(name) }
            return .object([:])
        case "block-dirty-bitmap-enable", "block-dirty-bitmap-disable":
            let name = try a.string("name")
            try withBitmaps(try a.string("node")) {
                if command.hasSuffix("enable") { try $0.enable(name) } else { try $0.disable(name) }
            }
            return .object([:])
        case "block-dirty-bitmap-merge":
            let target = try a.string("target")
            let sources = try bitmapNames(a)
            let path = try resolve(a.string("node"))
            if let n = node(path) { try barrier(disk: n.disk) }
            try withBitmaps(path) { try $0.merge(sources, into: target) }
            return .object([:])
        case "drive-backup":
            return try driveBackup(a)
        case "transaction":
            return try transaction(a)
        case "x-query-backups":
            try a.allow(["device", "all"])
            guard let catalog else { throw CommandError("the catalog is not open") }
            let device = try a.optionalString("device").map { (try? resolve($0)) ?? $0 }
            do {
                return try JSONValue.from(catalog.backups(device: device,
                                                          includingSupersededFailures: try a.optionalBool("all") ?? false))
            } catch let e as CommandError { throw e } catch { throw CommandError("\(error)") }
        case "x-query-backup":
            try a.allow(["id"])
            guard let catalog else { throw CommandError("the catalog is not open") }
            let id = try a.string("id")
            let record: BackupRecord?
            do { record = try catalog.backup(id: id) } catch { throw CommandError("\(error)") }
            guard let record else { throw CommandError("Backup '\(id)' not found") }
            return try JSONValue.from(record)
        case "x-chain-merge":
            // Runs on the asking client's thread, holding the chain busy.
            return try chainMerge(a)
        case "x-chain-retain":
            return try chainRetain(a)
        case "x-verify":
            // Runs on the asking client's thread: other clients are served meanwhile.
            try a.allow(["image", "against"])
            let image = try a.string("image")
            try checkNotUnderMaintenance(image)
            do {
                if let device = try a.optionalString("against") {
                    return try JSONValue.from(Verify.againstDevice(image: image, device: device))
                }
                return try JSONValue.from(Verify.againstDigests(image: image))
            } catch let e as CommandError { throw e } catch { throw CommandError("cannot verify \(image): \(error)") }
        case "x-restore":
            try a.allow(["image", "target", "force", "verify"])
            let image = try a.string("image"), target = try a.string("target")
            try checkNotUnderMaintenance(image)
            if let path = try? resolve(target), let job = jobs.locked({ jobs.all.first(where: { $0.work.device == path && $0.copying }) }) {
                throw CommandError("\(target) is the source of job '\(job.id)'; cancel it before restoring onto the device")
            }
            do {
                return try JSONValue.from(Restore.run(image: image, to: target, force: try a.optionalBool("force") ?? false,
                                                      verifyFirst: try a.optionalBool("verify") ?? true))
            } catch let e as CommandError { throw e } catch { throw CommandError("\(error)") }
        case "x-query-plans":
            try a.allow([])
            guard let plans else { throw CommandError("this ringbackd runs no plans") }
            return plans.query()
        case "x-plan-run":
            try a.allow(["name"])
            guard let plans else { throw CommandError("this ringbackd runs no plans") }
            return try plans.runNow(try a.string("name"))
        case "query-jobs":
            return .array(jobs.locked { jobs.all.map(\.info) })
        case "query-block-jobs":
            return .array(jobs.locked { jobs.all.map(\.blockInfo) })
        case "job-pause", "job-resume", "job-cancel", "job-complete", "job-finalize", "job-dismiss":
            try a.allow(["id"])
            try jobVerb(String(command.dropFirst(4)), try a.string("id"))
            return .object([:])
        case "block-job-pause", "block-job-resume", "block-job-cancel", "block-job-complete", "block-job-finalize",
             "block-job-dismiss":
            // QEMU's older names: the job is named `device` (finalize and dismiss: `id`).
            try a.allow(["device", "id", "force"])
            let id = try a.optionalString("device") ?? a.string("id")
            try jobVerb(String(command.dropFirst(10)), id)
            return .object([:])
        case "block-job-set-speed":
            try a.allow(["device", "speed"])
            guard let speed = try a.optionalInt("speed") else { throw CommandError("Parameter 'speed' is missing") }
            try jobs.setSpeed(try a.string("device"), speed)
            return .object([:])
        default:
            throw CommandError.commandNotFound(command)
        }
    }
}

extension Daemon {
    func jobVerb(_ verb: String, _ id: String) throws {
        switch verb {
        case "pause": try jobs.pause(id)
        case "resume": try jobs.resume(id)
        case "cancel": try jobs.cancel(id)
        case "complete": try jobs.complete(id)
        case "finalize": try jobs.finalize(id)
        default: try jobs.dismiss(id)
        }
    }
}

/// The names of `block-dirty-bitmap-merge`'s `bitmaps`: strings, or QEMU's
/// `{"node": ..., "name": ...}` objects.
func bitmapNames(_ a: Arguments) throws -> [String] {
    try a.array("bitmaps").map { v -> String in
        if let s = v.stringValue { return s }
        if let s = v["name"]?.stringValue { return s }
        throw CommandError("Invalid parameter type for 'bitmaps', expected: array of names")
    }
}

/// Typed access to a command's arguments, with QMP's error texts.
struct Arguments {
    let values: [String: JSONValue]

    func string(_ key: String) throws -> String {
        guard let v = values[key] else { throw CommandError("Parameter '\(key)' is missing") }
        guard let s = v.stringValue else { throw CommandError("Invalid parameter type for '\(key)', expected: string") }
        return s
    }
    func optionalString(_ key: String) throws -> String? { values[key] == nil ? nil : try string(key) }
    func optionalInt(_ key: String) throws -> Int64? {
        guard let v = values[key] else { return nil }
        guard let i = v.intValue else { throw CommandError("Invalid parameter type for '\(key)', expected: integer") }
        return i
    }
    func optionalBool(_ key: String) throws -> Bool? {
        guard let v = values[key] else { return nil }
        guard let b = v.boolValue else { throw CommandError("Invalid parameter type for '\(key)', expected: boolean") }
        return b
    }
    func optionalObject(_ key: String) throws -> [String: JSONValue]? {
        guard let v = values[key] else { return nil }
        guard let o = v.objectValue else { throw CommandError("Invalid parameter type for '\(key)', expected: object") }
        return o
    }
    /// Refuses arguments the command does not know, as QMP does.
    func allow(_ keys: Set<String>) throws {
        if let unexpected = values.keys.sorted().first(where: { !keys.contains($0) }) {
            throw CommandError("Parameter '\(unexpected)' is unexpected")
        }
    }
    func array(_ key: String) throws -> [JSONValue] {
        guard let v = values[key] else { throw CommandError("Parameter '\(key)' is missing") }
        guard let a = v.arrayValue else { throw CommandError("Invalid parameter type for '\(key)', expected: array") }
        return a
    }
}
