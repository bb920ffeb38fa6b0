import BlockIO
import Foundation
import Images

/// A chain folder as retention sees it.
public struct RetentionCandidate: Sendable, Equatable {
    public var path: String
    /// The time of its newest image (`yyyyMMddTHHmmssZ`), nil when it has none yet.
    public var newestPoint: String?
    /// Why it must not be removed or merged now (a backup writes into it), or nil.
    public var busy: String?

    public init(path: String, newestPoint: String?, busy: String? = nil) {
        self.path = path
        self.newestPoint = newestPoint
        self.busy = busy
    }
}

/// Which chains a retention run keeps and which it removes.
public struct RetentionPlan: Sendable, Equatable {
    /// Kept chains, oldest first; their surplus incrementals are merged.
    public var keep: [String] = []
    /// Chains to remove, oldest first.
    public var remove: [String] = []
    /// Chains left alone, with the reason (old enough to go, but busy).
    public var skipped: [Skipped] = []

    public struct Skipped: Codable, Sendable, Equatable {
        public var chain: String
        public var reason: String
        public init(chain: String, reason: String) {
            self.chain = chain
            self.reason = reason
        }
    }

    /// Keeps the `keepChains` newest chains (all of them when nil) and removes
    /// the older ones, except a chain a backup is being written into. Chains
    /// are ordered by their newest point in time (then by path); a chain
    /// without any image yet is being started and counts as the newest of
    /// all. The newest chain is always kept, whatever `keepChains` says.
    public static func make(_ chains: [RetentionCandidate], keepChains: Int?) -> RetentionPlan {
        let ordered = chains.sorted { a, b in
            switch (a.newestPoint, b.newestPoint) {
            case let (x?, y?): x == y ? a.path < b.path : x < y
            case (nil, nil): a.path < b.path
            case (nil, _): false
            case (_, nil): true
            }
        }
        let keepCount = max(1, keepChains ?? chains.count)
        var plan = RetentionPlan()
        for (i, chain) in ordered.enumerated() {
            if i >= ordered.count - keepCount {
                plan.keep.append(chain.path)
            } else if let busy = chain.busy {
                plan.keep.append(chain.path)
                plan.skipped.append(Skipped(chain: chain.path, reason: "not removed: \(busy)"))
            } else {
                plan.remove.append(chain.path)
            }
        }
        return plan
    }
}

/// What a retention run did (`x-chain-retain`'s reply).
public struct RetentionSummary: Codable, Sendable {
    public var chainRoot: String
    /// nil: no incrementals merged.
    public var keepIncrementals: Int?
    /// nil: no chains removed.
    public var keepChains: Int?
    public var merged: [ChainMergeSummary] = []
    public var removedChains: [String] = []
    public var keptChains: [String] = []
    public var skipped: [RetentionPlan.Skipped] = []
    /// Chains where something failed, with the error; the rest was still done.
    public var errors: [RetentionPlan.Skipped] = []

    enum CodingKeys: String, CodingKey {
        case merged, skipped, errors
        case chainRoot = "chain-root", keepIncrementals = "keep-incrementals", keepChains = "keep-chains"
        case removedChains = "removed-chains", keptChains = "kept-chains"
    }
}

/// Retention over the chains of one device (DESIGN §8): the folders under a
/// device folder, each one chain. Old chains are removed whole; in the chains
/// kept, incrementals beyond `keepIncrementals` are merged into the full,
/// oldest first, so every remaining restore point stays restorable.
public enum ChainRetention {
    /// How the caller takes part.
    public struct Hooks: @unchecked Sendable {
        /// Why a backup or other work forbids touching `chain` now, or nil.
        public var busy: (String) -> String? = { _ in nil }
        /// Runs `body` while `chain` is held for maintenance; throws (and
        /// skips the chain) when it cannot be held.
        public var holding: (String, () throws -> Void) throws -> Void = { _, body in try body() }
        /// The merge hooks for one chain.
        public var merge: (String) -> ChainMergeHooks = { _ in ChainMergeHooks() }
        /// Before a chain's files go: the catalog marks its backups removed.
        public var beforeRemoving: (String) throws -> Void = { _ in }
        /// After each step, for progress output.
        public var report: (String) -> Void = { _ in }
        public init() {}
    }

    /// The sub-folders of `root` that hold a chain: images, or a first image
    /// being written (a chain being started).
    public static func chains(under root: String) -> [ChainDirectory] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.sorted().map { ChainDirectory(path: root + "/" + $0) }.filter { chain in
            ChainDirectory.isDirectory(chain.path) && (!chain.images().isEmpty || !chain.partials().isEmpty)
        }
    }

    /// Applies retention under `root`. Without `keepIncrementals` nothing is
    /// merged, without `keepChains` no chain is removed; one must be given.
    public static func run(root: String, keepIncrementals: Int?, keepChains: Int?, hooks: Hooks = Hooks()) throws
        -> RetentionSummary {
        guard keepIncrementals != nil || keepChains != nil else {
            throw BackupError("retention needs keep-incrementals, keep-chains or both")
        }
        if let n = keepIncrementals, n < 0 { throw BackupError("keep-incrementals must be 0 or more, got \(n)") }
        if let n = keepChains, n < 1 { throw BackupError("keep-chains must be 1 or more, got \(n)") }
        guard ChainDirectory.isDirectory(root) else { throw BackupError("chain root \(root) is not a folder") }
        let root = URL(fileURLWithPath: root).standardizedFileURL.path
        let chains = chains(under: root)
        let candidates = chains.map { chain in
            RetentionCandidate(path: chain.path, newestPoint: chain.chainImages().last?.time,
                               busy: hooks.busy(chain.path) ?? chain.partials().first.map { "a backup is being written into it (\($0))" })
        }
        let plan = RetentionPlan.make(candidates, keepChains: keepChains)
        var summary = RetentionSummary(chainRoot: root, keepIncrementals: keepIncrementals, keepChains: keepChains)
        summary.skipped = plan.skipped
        for path in plan.remove {
            do {
                try hooks.holding(path) {
                    try ChainRemoval.remove(ChainDirectory(path: path)) { try hooks.beforeRemoving(path) }
                }
                summary.removedChains.append(path)
                hooks.report("removed chain \(path)")
            } catch {
                summary.errors.append(.init(chain: path, reason: "\(error)"))
            }
        }
        for path in plan.keep {
            summary.keptChains.append(path)
            guard let keepIncrementals else { continue }
            if let busy = candidates.first(where: { $0.path == path })?.busy {
                summary.skipped.append(.init(chain: path, reason: "not merged: \(busy)"))
                continue
            }
            do {
                try hooks.holding(path) {
                    let chain = ChainDirectory(path: path)
                    while let merged = try ChainMerge.run(chain, keep: keepIncrementals, hooks: hooks.merge(path)) {
                        summary.merged.append(merged)
                        hooks.report("merged \(merged.incremental) into the full of \(path): now \(merged.image)")
                    }
                }
            } catch {
                summary.errors.append(.init(chain: path, reason: "\(error)"))
            }
        }
        return summary
    }
}

/// Removes a whole chain folder's backups.
public enum ChainRemoval {
    /// Removes the images of `chain`, newest first (so that what is left is a
    /// shorter valid chain at every instant), each with its digests, then the
    /// folder when nothing else is in it. `beforeRemoving` runs first (the
    /// catalog marks the chain's backups removed). Refused while an image is
    /// being written into the folder.
    public static func remove(_ chain: ChainDirectory, beforeRemoving: () throws -> Void = {}) throws {
        let lock = try ChainLock(chain)
        defer { lock.release() }
        if let partial = chain.partials().first {
            throw BackupError("a backup is being written into \(chain.path) (\(partial)); the chain cannot be removed meanwhile")
        }
        try beforeRemoving()
        for image in chain.images().reversed() {
            for file in [image, DigestFile.path(forImage: image)] where unlink(file) != 0 && errno != ENOENT {
                throw BackupError("\(SystemError(errno: errno, "remove \(file)"))")
            }
        }
        unlink(ChainMerge.journalPath(chain))
        ChainMerge.syncDirectory(chain.path)
        lock.release()
        if rmdir(chain.path) == 0 {
            ChainMerge.syncDirectory((chain.path as NSString).deletingLastPathComponent)
        }
    }
}
