import BlockDevices
import BlockIO
import ControlProtocol
import DirtyBitmaps
import Foundation

/// The `x-lvm-snapshot` transaction action (DESIGN §10): an LVM snapshot of a
/// logical volume, created in commit while the transaction's devices are
/// quiesced, so that it holds the transaction's point in time. The backup
/// actions of the same transaction that name the volume read from the
/// snapshot; the snapshot is removed when their jobs end, whatever the outcome,
/// or — with `x-keep` on a thin volume after a successful backup — kept as the
/// base from which the next incremental's changes come by `thin_delta`.
///
/// Arguments: `device` (the LV), `snapshot-name` (default `<lv>-rb-<UTC>`),
/// `size` (bytes of COW space for a classic snapshot; default a fifth of the
/// LV, at least 32 MiB; thin volumes get thin snapshots and take no size),
/// `x-keep`.
///
/// Commit cannot fail, so an `lvcreate` that fails there fails the jobs that
/// were to read the snapshot instead, with its message.
final class LVMSnapshotAction: TransactionAction {
    private let arguments: Arguments
    private unowned let daemon: Daemon
    /// The origin volume (set in prepare).
    private(set) var origin: LogicalVolume?
    private(set) var originPath: String?
    private var name = ""
    private var size: UInt64?
    private var keep = false
    /// The snapshot, once commit made it.
    private(set) var snapshot: LogicalVolume?
    /// The snapshot's node, which the backups read.
    private var snapshotPath: String?
    /// Why commit could not make it.
    private(set) var failure: String?
    /// The backup jobs that read the snapshot and have not ended yet.
    private var readers: [ObjectIdentifier] = []
    private var anyReaderFailed = false
    private var publishedImage: String?
    private let lock = NSLock()

    init(daemon: Daemon, arguments: Arguments) {
        self.daemon = daemon
        self.arguments = arguments
    }

    var deviceName: String? { arguments.values["device"]?.stringValue }

    func prepare() throws {
        let a = arguments
        try a.allow(["device", "snapshot-name", "size", "x-keep"])
        let device = try a.string("device")
        let path = try daemon.resolve(device)
        let volume: LogicalVolume
        do { volume = try LVMTools.volume(path) } catch {
            throw CommandError("x-lvm-snapshot: \(device) is not an LVM logical volume: \(error)")
        }
        let isThin = volume.segmentType == .thin
        guard [.linear, .striped, .thin].contains(volume.segmentType) else {
            throw CommandError("x-lvm-snapshot: \(volume.fullName) is a \(volume.segmentTypeName) volume"
                               + (volume.segmentType == .snapshot ? "; snapshot its origin instead" : ", which ringback cannot snapshot"))
        }
        keep = try a.optionalBool("x-keep") ?? false
        if keep && !isThin {
            throw CommandError("x-lvm-snapshot: 'x-keep' needs a thin volume (thin_delta compares thin snapshots); \(volume.fullName) is \(volume.segmentTypeName)")
        }
        name = try a.optionalString("snapshot-name") ?? "\(volume.name)-rb-\(Self.stamp())"
        guard !name.isEmpty, name.count <= 120, name.allSatisfy({ $0.isLetter || $0.isNumber || "+_.-".contains($0) }),
              !name.hasPrefix("-")
        else { throw CommandError("x-lvm-snapshot: '\(name)' is not a valid LV name (letters, digits, + _ . -)") }
        guard !LVMTools.exists(volume.vg, name) else {
            throw CommandError("x-lvm-snapshot: a logical volume \(volume.vg)/\(name) exists already")
        }
        if isThin {
            if a.values["size"] != nil {
                throw CommandError("x-lvm-snapshot: \(volume.fullName) is thin and gets a thin snapshot, which takes no 'size'")
            }
        } else {
            let wanted = try a.optionalInt("size").map { s -> UInt64 in
                guard s > 0 else { throw CommandError("Parameter 'size' expects a positive number of bytes") }
                return UInt64(s)
            } ?? max(volume.size / 5, 32 << 20)
            let free = try LVMTools.freeBytes(vg: volume.vg)
            guard wanted <= free else {
                throw CommandError("x-lvm-snapshot: volume group \(volume.vg) has \(free >> 20) MiB free, "
                                   + "less than the \(wanted >> 20) MiB COW space asked for the snapshot of \(volume.fullName)")
            }
            size = wanted
        }
        origin = volume
        originPath = path
    }

    func abort() {}

    /// Makes the snapshot (the devices are still quiesced); it is recorded
    /// before it exists, so a crash right after still removes it at restart.
    func commit() {
        guard let origin else { return }
        SnapshotRecords.update(daemon.state) { $0.append(.init(vg: origin.vg, name: name, origin: originPath ?? "", base: nil)) }
        var args = ["-q", "-s", "-n", name]
        if let size { args += ["-L", "\(size)b"] } else { args += ["--setactivationskip", "n"] }
        args.append(origin.fullName)
        do {
            try LVMTools.run("lvcreate", args)
            snapshot = try LVMTools.volume("\(origin.vg)/\(name)")
            snapshotPath = try BlockDevices.LVM().node(of: snapshot!)
            log("snapshot \(origin.vg)/\(name) of \(origin.fullName) created")
        } catch {
            failure = "cannot create the snapshot \(origin.vg)/\(name) of \(origin.fullName): \(error)"
            log(failure!)
            remove()
        }
    }

    /// The path the backups read, or why there is none.
    func source() throws -> String {
        if let failure { throw CommandError(failure) }
        guard let snapshotPath else { throw CommandError("the snapshot of \(origin?.fullName ?? "?") was not created") }
        return snapshotPath
    }

    /// A backup job of the transaction reads the snapshot.
    func attach(_ work: BackupWork) {
        lock.withLock { readers.append(ObjectIdentifier(work)) }
    }

    /// A reader's job ended. When the last one has, the snapshot goes (or is
    /// kept as the next thin-delta base). Returns the reason for a failure
    /// that the snapshot explains: its COW space filled up.
    func jobEnded(_ work: BackupWork, succeeded: Bool) -> String? {
        var overflow: String?
        if !succeeded, let snapshot, snapshot.segmentType == .snapshot,
           let now = try? LVMTools.volume(snapshot.fullName), now.isInvalidSnapshot || (now.dataPercent ?? 0) >= 100 {
            overflow = "the snapshot \(snapshot.fullName) of \(origin?.fullName ?? "?") ran out of its "
                + "\((size ?? 0) >> 20) MiB COW space during the backup (writes to the volume outpaced the copy); "
                + "give x-lvm-snapshot a larger 'size'"
        }
        let last = lock.withLock { () -> Bool in
            readers.removeAll { $0 == ObjectIdentifier(work) }
            if !succeeded { anyReaderFailed = true } else { publishedImage = work.image }
            return readers.isEmpty
        }
        if last {
            if keep, !anyReaderFailed, let image = publishedImage, let snapshot, let thinID = snapshot.thinID {
                keepAsBase(snapshot, thinID: thinID, image: image)
            } else {
                remove()
            }
        }
        return overflow
    }

    /// The kept snapshot whose thin_delta against this one gives the changes
    /// since `previous`, the image an incremental builds on.
    func base(for previous: String) -> SnapshotRecords.Record? {
        guard let originPath, origin?.segmentType == .thin else { return nil }
        return SnapshotRecords.load(daemon.state).first { $0.origin == originPath && $0.base?.image == previous }
    }

    /// The byte ranges changed between a kept base and this snapshot.
    func delta(from base: SnapshotRecords.Record) throws -> [Extent] {
        guard let origin, let pool = origin.pool, let snapshot, let newID = snapshot.thinID, let oldID = base.base?.thinID else {
            throw CommandError("thin_delta needs two thin snapshots of one pool")
        }
        do {
            return try LVMTools.thinDelta(pool: origin.vg, pool, from: oldID, to: newID).map { Extent(offset: $0.offset, length: $0.length) }
        } catch {
            throw CommandError("thin_delta between \(base.vg)/\(base.name) and \(snapshot.fullName) failed: \(error)")
        }
    }

    private func keepAsBase(_ snapshot: LogicalVolume, thinID: Int, image: String) {
        // The previous base of this volume is done with: the new one follows the newest image.
        let older = SnapshotRecords.load(daemon.state).filter { $0.origin == originPath && $0.base != nil && $0.name != snapshot.name }
        for r in older { SnapshotRecords.removeVolume(r, state: daemon.state) }
        SnapshotRecords.update(daemon.state) { records in
            if let i = records.firstIndex(where: { $0.vg == snapshot.vg && $0.name == snapshot.name }) {
                records[i].base = .init(image: image, thinID: thinID)
            }
        }
        log("snapshot \(snapshot.fullName) kept as the thin-delta base of \(image)")
    }

    private func remove() {
        guard let origin else { return }
        SnapshotRecords.removeVolume(.init(vg: origin.vg, name: name, origin: originPath ?? "", base: nil), state: daemon.state)
    }

    private static func stamp() -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return f.string(from: Date())
    }
}

/// The snapshots ringbackd made and has not removed (`lvm-snapshots.json` in
/// the state directory): transient ones (removed when their jobs end, or at
/// the next start after a crash) and kept thin-delta bases.
enum SnapshotRecords {
    struct Record: Codable, Equatable {
        var vg: String
        var name: String
        /// The origin's device path.
        var origin: String
        /// Set on a kept thin-delta base.
        var base: Base?
        struct Base: Codable, Equatable {
            /// The image whose contents the snapshot holds.
            var image: String
            var thinID: Int
        }
    }

    private static let lock = NSLock()

    static func file(_ state: StateFiles) -> String { state.root + "/lvm-snapshots.json" }

    static func load(_ state: StateFiles) -> [Record] {
        lock.withLock { read(state) }
    }

    private static func read(_ state: StateFiles) -> [Record] {
        guard let data = FileManager.default.contents(atPath: file(state)) else { return [] }
        return (try? JSONDecoder().decode([Record].self, from: data)) ?? []
    }

    static func update(_ state: StateFiles, _ change: (inout [Record]) -> Void) {
        lock.withLock {
            var records = read(state)
            change(&records)
            let path = file(state)
            do {
                let data = try JSONEncoder().encode(records)
                try data.write(to: URL(fileURLWithPath: path + ".new"))
                guard rename(path + ".new", path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            } catch {
                log("cannot save \(path): \(error)")
            }
        }
    }

    /// Removes the volume (if it is still there) and its record.
    static func removeVolume(_ record: Record, state: StateFiles) {
        if LVMTools.exists(record.vg, record.name) {
            do {
                try LVMTools.run("lvremove", ["-q", "-f", "\(record.vg)/\(record.name)"])
                log("snapshot \(record.vg)/\(record.name) removed")
            } catch {
                log("cannot remove snapshot \(record.vg)/\(record.name): \(error); it stays recorded and is retried at the next start")
                return
            }
        }
        update(state) { $0.removeAll { $0.vg == record.vg && $0.name == record.name } }
    }

    /// At start: transient snapshots left by a daemon that stopped before its
    /// jobs ended are removed; kept bases stay.
    static func removeLeftovers(_ state: StateFiles) {
        for r in load(state) where r.base == nil {
            log("removing snapshot \(r.vg)/\(r.name) left by an earlier ringbackd")
            removeVolume(r, state: state)
        }
    }
}
