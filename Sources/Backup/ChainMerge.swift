import BlockIO
import Foundation
import Images

/// One merge of a chain folder: the full backup `full` takes in the oldest
/// incremental `incremental` and is renamed `merged`. Written beside the chain
/// as its journal while the merge runs, so that an interrupted merge is
/// finished, never guessed at. Names are file names inside `chain`.
public struct ChainMergeStep: Codable, Sendable, Equatable {
    public var chain: String
    /// The full as it was; its own point in time is given up.
    public var full: String
    /// The incremental folded into it; its point in time lives on in `merged`.
    public var incremental: String
    /// The full's new name: the incremental's sequence number and time, so
    /// that every file name still says which point in time the file holds.
    public var merged: String

    public init(chain: String, full: String, incremental: String, merged: String) {
        self.chain = chain
        self.full = full
        self.incremental = incremental
        self.merged = merged
    }

    public var fullPath: String { chain + "/" + full }
    public var incrementalPath: String { chain + "/" + incremental }
    public var mergedPath: String { chain + "/" + merged }
}

/// What one merge did.
public struct ChainMergeSummary: Codable, Sendable {
    public var chain: String
    /// The full before the merge (its point in time is gone).
    public var retired: String
    /// The incremental that was folded in (its file is gone).
    public var incremental: String
    /// The full after the merge, holding the incremental's point in time.
    public var image: String
    /// Images re-pointed at the merged full.
    public var relinked: [String]
    /// True when this finished a merge that an earlier run began.
    public var recovered: Bool
    /// Figures of the data merge; nil when an interrupted merge had done it already.
    public var merge: Qcow2MergeSummary?
    /// Incrementals left in the folder.
    public var incrementalsLeft: Int
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case chain, retired, incremental, image, relinked, recovered, merge, seconds
        case incrementalsLeft = "incrementals-left"
    }
}

/// What the caller of a merge is told, and when.
public struct ChainMergeHooks: @unchecked Sendable {
    /// Everything is checked and nothing written yet: the full's point in time
    /// is about to be given up (the catalog marks it non-restorable here).
    /// Also called before an interrupted merge is redone. Must be idempotent.
    public var beforeWriting: (ChainMergeStep) throws -> Void = { _ in }
    /// The merged full is in place under its new name (the old files are
    /// still there); an interrupted call is repeated. Must be idempotent.
    public var afterMerge: (ChainMergeStep, _ imageSize: UInt64) throws -> Void = { _, _ in }
    /// Named points of the merge as each becomes durable (tests end the
    /// process there to prove that a crash at that point loses nothing).
    public var checkpoint: (String) -> Void = { _ in }
    /// Progress in bytes of the data merge.
    public var progress = CopyControl()

    public init() {}
}

/// Folds the oldest incremental of a chain into its full backup (DESIGN §8,
/// chain maintenance), keeping every remaining restore point restorable.
///
/// A chain folder holds `0000-full-T0.qcow2`, `0001-inc-T1.qcow2`,
/// `0002-inc-T2.qcow2`, …, each incremental an overlay on the image before it.
/// Merging `0001` into the full gives `0001-full-T1.qcow2` (the point in time
/// T1 as a full image), `0002` is re-pointed at it, and `0000-full-T0` and
/// `0001-inc-T1` are gone. Point T0 is given up; every other point stays.
///
/// Why every remaining point is restorable at every instant (a crash may come
/// anywhere):
///
/// - The catalog marks T0 non-restorable (`beforeWriting`) before a byte is
///   written: T0 is the only point whose bytes change.
/// - The journal is written (atomically) before the data: a later run finishes
///   exactly this merge, redoing any step that may not have completed.
/// - The data of `0001` is written into the full (`Qcow2Merge`): only guest
///   clusters that `0001` allocates change, and `0001` hides all of them, so
///   every view through `0001` (T1, T2, …) reads the same bytes before, during
///   and after; the full's new tables take effect in one header-sector write.
/// - The digests of T1 are written for the new name (atomically), then the
///   new name is made a hard link of the full: both names hold the same file,
///   so `0001-inc-T1` (whose backing is the old name) is still whole.
/// - Each image that named `0001` as its backing file is re-pointed at the new
///   name in one header-sector write; it reads the same bytes either way.
/// - The catalog is told (`afterMerge`): T1's backup now names the new file,
///   which exists, as does the old one.
/// - Only then are `0001` and the old name removed (no image refers to them),
///   and the journal last.
///
/// A backup into the chain, another merge or a retention run must not overlap
/// a merge: the folder is locked (flock) for its duration, a folder holding a
/// `.partial` image is refused, and ringbackd refuses backups into a folder
/// with a journal until the merge is finished.
public enum ChainMerge {
    /// The journal of a merge in progress, inside the chain folder.
    public static let journalName = ".merge-journal.json"

    public static func journalPath(_ chain: ChainDirectory) -> String { chain.file(journalName) }

    /// The merge a `run` would do: the oldest incremental of the oldest
    /// segment (a full and its incrementals) that has more than `keep`
    /// incrementals. nil when every segment has `keep` or fewer.
    public static func plan(_ chain: ChainDirectory, keep: Int = 0) -> ChainMergeStep? {
        for segment in chain.segments() where segment.count - 1 > keep {
            let full = segment[0], incremental = segment[1]
            return ChainMergeStep(chain: chain.path, full: full.name, incremental: incremental.name,
                                  merged: incremental.asFull)
        }
        return nil
    }

    /// Incrementals in the folder that build on a full of it.
    public static func incrementals(_ chain: ChainDirectory) -> Int {
        chain.segments().reduce(0) { $0 + $1.count - 1 }
    }

    /// The merge a crash interrupted, if its journal is there.
    public static func pending(_ chain: ChainDirectory) throws -> ChainMergeStep? {
        let path = journalPath(chain)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            var step = try JSONDecoder().decode(ChainMergeStep.self, from: data)
            // The folder may have been reached by another path since.
            step.chain = chain.path
            for name in [step.full, step.incremental, step.merged] where name.contains("/") || name.isEmpty {
                throw BackupError("names '\(name)', which is not a file name of the folder")
            }
            return step
        } catch let e as BackupError {
            throw BackupError("merge journal \(path) \(e.description); remove it only after checking the chain by hand")
        } catch {
            throw BackupError("merge journal \(path) cannot be read (\(error)); remove it only after checking the chain by hand")
        }
    }

    /// Finishes the merge a crash interrupted; nil when there was none.
    public static func recover(_ chain: ChainDirectory, hooks: ChainMergeHooks = ChainMergeHooks()) throws -> ChainMergeSummary? {
        let lock = try ChainLock(chain)
        defer { lock.release() }
        guard let step = try pending(chain) else { return nil }
        return try finish(step, merge: nil, hooks: hooks, recovered: true)
    }

    /// Merges once: finishes an interrupted merge if there is one, else folds
    /// the oldest incremental of the oldest segment with more than `keep`
    /// incrementals into its full. nil when there is nothing to do.
    public static func run(_ chain: ChainDirectory, keep: Int = 0, hooks: ChainMergeHooks = ChainMergeHooks())
        throws -> ChainMergeSummary? {
        let lock = try ChainLock(chain)
        defer { lock.release() }
        if let step = try pending(chain) { return try finish(step, merge: nil, hooks: hooks, recovered: true) }
        if let partial = chain.partials().first {
            throw BackupError("a backup is being written into \(chain.path) (\(partial)); the chain cannot be merged meanwhile")
        }
        guard let step = plan(chain, keep: keep) else { return nil }
        let merge = try check(step)
        try hooks.beforeWriting(step)
        try AtomicFile.write(Array(try JSONEncoder().encode(step)), to: journalPath(chain))
        hooks.checkpoint("journal-written")
        return try finish(step, merge: merge, hooks: hooks, recovered: false)
    }

    /// Everything that can be checked before writing: the overlay builds on
    /// the full, the images after it build on it, its digests are readable
    /// and the full can take the merge. Returns the prepared data merge.
    static func check(_ step: ChainMergeStep) throws -> Qcow2Merge {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: step.mergedPath) else {
            throw BackupError("cannot merge \(step.incremental) into \(step.full): \(step.mergedPath) already exists")
        }
        let digests = DigestFile.path(forImage: step.incrementalPath)
        guard fm.fileExists(atPath: digests) else {
            throw BackupError("cannot merge \(step.incrementalPath): it has no digest file \(digests), and the merged full would have none")
        }
        let summary = try DigestFile(contentsOf: digests)
        // The merged full gets its new name as a hard link first (see the type's comment).
        let probe = step.chain + "/.merge-link-probe"
        unlink(probe)
        guard link(step.fullPath, probe) == 0 else {
            throw BackupError("cannot merge in \(step.chain): \(SystemError(errno: errno, "make a hard link to \(step.fullPath)")); "
                              + "a crash-safe merge needs a filesystem with hard links")
        }
        unlink(probe)
        let merge: Qcow2Merge
        do { merge = try Qcow2Merge(top: step.incrementalPath, into: step.fullPath) } catch {
            throw BackupError("cannot merge \(step.incrementalPath) into \(step.fullPath): \(error)")
        }
        let size = try Qcow2Header.read(path: step.incrementalPath).size
        guard summary.deviceSize == size else {
            throw BackupError("digest file \(digests) describes \(summary.deviceSize) bytes, but \(step.incrementalPath) holds \(size)")
        }
        return merge
    }

    /// The steps after the journal, each one skipped when a crash left it
    /// done (see the type's comment for why this order keeps every point).
    private static func finish(_ step: ChainMergeStep, merge prepared: Qcow2Merge?, hooks: ChainMergeHooks,
                               recovered: Bool) throws -> ChainMergeSummary {
        let started = Date()
        let fm = FileManager.default
        let chain = ChainDirectory(path: step.chain)
        var figures: Qcow2MergeSummary?
        if fm.fileExists(atPath: step.incrementalPath) {
            let merge: Qcow2Merge
            if let prepared {
                merge = prepared
            } else {
                // Redo the data merge: it reads the same bytes from the incremental.
                let base = fm.fileExists(atPath: step.fullPath) ? step.fullPath : step.mergedPath
                do { merge = try Qcow2Merge(top: step.incrementalPath, into: base) } catch {
                    throw BackupError("cannot finish the interrupted merge of \(step.incrementalPath) into \(base): \(error)")
                }
                try hooks.beforeWriting(step)
            }
            do { figures = try merge.run(progress: hooks.progress, checkpoint: hooks.checkpoint) } catch {
                throw BackupError("merge of \(step.incrementalPath) into \(merge.base) failed: \(error); "
                                  + "every remaining point of the chain is intact, and the next merge finishes this one")
            }
            let digests = DigestFile.path(forImage: step.incrementalPath)
            if fm.fileExists(atPath: digests) {
                try DigestFile(contentsOf: digests).write(to: DigestFile.path(forImage: step.mergedPath))
            }
            hooks.checkpoint("digests-written")
        }
        if !fm.fileExists(atPath: step.mergedPath) {
            guard link(step.fullPath, step.mergedPath) == 0 else {
                throw BackupError("\(SystemError(errno: errno, "link \(step.fullPath) to \(step.mergedPath)"))")
            }
            syncDirectory(step.chain)
        }
        hooks.checkpoint("linked")
        let relinked = try relink(chain, from: step.incrementalPath, to: step.merged)
        hooks.checkpoint("relinked")
        // The catalog moves the incremental's backup to the merged image
        // while both names exist, so no restorable record names a gone file.
        var st = stat()
        let size = stat(step.mergedPath, &st) == 0 ? UInt64(st.st_size) : 0
        try hooks.afterMerge(step, size)
        hooks.checkpoint("recorded")
        for image in [step.incrementalPath, step.fullPath] where image != step.mergedPath {
            try remove(image)
            try remove(DigestFile.path(forImage: image))
        }
        syncDirectory(step.chain)
        hooks.checkpoint("removed")
        try remove(journalPath(chain))
        syncDirectory(step.chain)
        return ChainMergeSummary(chain: step.chain, retired: step.fullPath, incremental: step.incrementalPath,
                                 image: step.mergedPath, relinked: relinked, recovered: recovered, merge: figures,
                                 incrementalsLeft: incrementals(chain), seconds: Date().timeIntervalSince(started))
    }

    /// Re-points every image of the folder whose backing file is `from` at
    /// `name` (a file of the same folder). Returns the images changed.
    private static func relink(_ chain: ChainDirectory, from: String, to name: String) throws -> [String] {
        let target = standardized(from)
        var changed: [String] = []
        for image in chain.images() where standardized(image) != target {
            guard let backing = try Qcow2BackingName.read(image: image) else { continue }
            let resolved = backing.hasPrefix("/") ? backing : chain.path + "/" + backing
            guard standardized(resolved) == target else { continue }
            try Qcow2BackingName.rewrite(image: image, to: name)
            changed.append(image)
        }
        return changed
    }

    private static func standardized(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

    private static func remove(_ path: String) throws {
        guard unlink(path) == 0 || errno == ENOENT else { throw BackupError("\(SystemError(errno: errno, "remove \(path)"))") }
    }

    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY)
        if fd >= 0 { fsync(fd); close(fd) }
    }
}

/// A lock on a chain folder (flock(2) on the folder itself), also across
/// processes: a merge or removal holds it exclusively, a backup being written
/// into the folder (a ringbackd job) shares it. So an offline `ringback merge`
/// and the daemon's backups never overlap, nor do two merges.
public final class ChainLock: @unchecked Sendable {
    private var fd: Int32

    /// Takes the lock without waiting; a lock held the other way is an error
    /// that says so.
    public init(_ chain: ChainDirectory, shared: Bool = false) throws {
        fd = open(chain.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw BackupError("\(SystemError(errno: errno, "open chain folder \(chain.path)"))") }
        guard flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0 else {
            let e = errno
            close(fd)
            if e == EWOULDBLOCK {
                throw BackupError(shared
                    ? "chain folder \(chain.path) is busy: a merge or removal (ringback merge or retain) holds its lock"
                    : "chain folder \(chain.path) is busy: a backup is being written into it, or another merge or removal runs")
            }
            throw BackupError("\(SystemError(errno: e, "lock chain folder \(chain.path)"))")
        }
    }

    public func release() {
        guard fd >= 0 else { return }
        close(fd)
        fd = -1
    }

    deinit { release() }
}
