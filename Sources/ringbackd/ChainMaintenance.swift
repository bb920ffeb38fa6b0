import Backup
import Catalog
import ControlProtocol
import Foundation

/// Chain maintenance over QMP (DESIGN §8): `x-chain-merge` folds the oldest
/// incremental of a chain into its full, `x-chain-retain` applies retention to
/// every chain of a device folder. A chain is held while it is maintained, so
/// no backup can be created into it, and a chain that a job writes into is
/// never merged or removed.
extension Daemon {
    /// `x-chain-merge {chain, keep-incrementals?}`: one merge (of the oldest
    /// segment with more than `keep-incrementals`, default 0, incrementals);
    /// an error when there is nothing to merge, a job writes into the chain,
    /// or the merge fails. An interrupted merge is finished instead.
    func chainMerge(_ a: Arguments) throws -> JSONValue {
        try a.allow(["chain", "keep-incrementals"])
        let chain = try chainFolder(a.string("chain"), argument: "chain")
        let keep = try a.optionalInt("keep-incrementals") ?? 0
        guard keep >= 0 else { throw CommandError("Parameter 'keep-incrementals' expects a value of 0 or more") }
        try jobs.beginMaintenance(of: chain, "a merge (x-chain-merge) is running")
        defer { jobs.endMaintenance(of: chain) }
        do {
            guard let summary = try ChainMerge.run(ChainDirectory(path: chain), keep: Int(keep), hooks: mergeHooks()) else {
                throw CommandError(keep == 0 ? "chain folder \(chain) has no incremental to merge into its full"
                                   : "chain folder \(chain) has no more than \(keep) incrementals per full; nothing to merge")
            }
            return try JSONValue.from(summary)
        } catch let e as CommandError { throw e } catch { throw CommandError("\(error)") }
    }

    /// `x-chain-retain {chain-root, keep-incrementals, keep-chains}`: removes
    /// the oldest chains beyond `keep-chains` and merges the incrementals of
    /// the kept ones down to `keep-incrementals` (either may be left out, not
    /// both). Chains a job writes into are skipped. Any failure is an error
    /// that says what was done before it.
    func chainRetain(_ a: Arguments) throws -> JSONValue {
        try a.allow(["chain-root", "keep-incrementals", "keep-chains"])
        let root = try chainFolder(a.string("chain-root"), argument: "chain-root")
        let keepIncrementals = try a.optionalInt("keep-incrementals"), keepChains = try a.optionalInt("keep-chains")
        guard keepIncrementals != nil || keepChains != nil else {
            throw CommandError("Parameter 'keep-incrementals' or 'keep-chains' (or both) must be given")
        }
        if let n = keepIncrementals, n < 0 { throw CommandError("Parameter 'keep-incrementals' expects a value of 0 or more") }
        if let n = keepChains, n < 1 { throw CommandError("Parameter 'keep-chains' expects a value of at least 1") }

        var hooks = ChainRetention.Hooks()
        hooks.busy = { [jobs] chain in
            let folder = canonicalChain(chain)
            if let job = jobs.writer(of: folder) { return "job '\(job.id)' writes into it" }
            return jobs.maintenance(of: folder)
        }
        hooks.holding = { [jobs] chain, body in
            let folder = canonicalChain(chain)
            try jobs.beginMaintenance(of: folder, "retention (x-chain-retain) is running")
            defer { jobs.endMaintenance(of: folder) }
            try body()
        }
        hooks.merge = { [unowned self] _ in mergeHooks() }
        hooks.beforeRemoving = { [catalog] chain in try catalog?.removeChain(directory: chain) }
        hooks.report = { message in log(message) }
        let summary: RetentionSummary
        do {
            summary = try ChainRetention.run(root: root, keepIncrementals: keepIncrementals.map(Int.init),
                                             keepChains: keepChains.map(Int.init),
                                             hooks: hooks)
        } catch { throw CommandError("\(error)") }
        guard summary.errors.isEmpty else {
            let done = "merged \(summary.merged.count) incremental(s), removed \(summary.removedChains.count) chain(s)"
            let failed = summary.errors.map { "\($0.chain): \($0.reason)" }.joined(separator: "; ")
            throw CommandError("retention of \(root) \(done), but failed for \(failed)")
        }
        return try JSONValue.from(summary)
    }

    /// The catalog's part in a merge: the full's point in time is retired
    /// before anything is written, and the incremental's backup takes the
    /// merged image at the end.
    func mergeHooks() -> ChainMergeHooks {
        var hooks = ChainMergeHooks()
        let catalog = self.catalog
        hooks.beforeWriting = { step in
            try catalog?.retireForMerge(fullImage: step.fullPath, incrementalImage: step.incrementalPath)
        }
        hooks.afterMerge = { [weak self] step, size in
            try catalog?.recordMerge(fullImage: step.fullPath, incrementalImage: step.incrementalPath,
                                     mergedImage: step.mergedPath, imageSize: size)
            log("merged \(step.incrementalPath) into \(step.fullPath): the chain's full is now \(step.mergedPath)")
            self?.emit("X_CHAIN_MERGED", .object([
                "chain": .string(step.chain), "retired": .string(step.fullPath),
                "incremental": .string(step.incrementalPath), "image": .string(step.mergedPath),
            ]))
        }
        #if DEBUG
        // Tests hold a merge at a named point (RINGBACK_TEST_HOLD_AT=point:file)
        // until they remove the file; "<file>.reached" says it got there.
        if let hold = ProcessInfo.processInfo.environment["RINGBACK_TEST_HOLD_AT"], let colon = hold.firstIndex(of: ":") {
            let point = String(hold[..<colon]), file = String(hold[hold.index(after: colon)...])
            hooks.checkpoint = { name in
                guard name == point, FileManager.default.fileExists(atPath: file) else { return }
                FileManager.default.createFile(atPath: file + ".reached", contents: nil)
                let deadline = Date().addingTimeInterval(120)
                while FileManager.default.fileExists(atPath: file) && Date() < deadline { usleep(10_000) }
            }
        }
        #endif
        return hooks
    }

    /// At start: merges that a crash interrupted, in the chains the catalog
    /// knows, are finished before any backup can go into them.
    func finishInterruptedMerges() {
        guard let catalog, let chains = try? catalog.chains() else { return }
        for record in chains {
            let chain = ChainDirectory(path: record.directory)
            guard FileManager.default.fileExists(atPath: ChainMerge.journalPath(chain)) else { continue }
            do {
                if let summary = try ChainMerge.recover(chain, hooks: mergeHooks()) {
                    log("finished the interrupted merge in \(chain.path): the chain's full is now \(summary.image)")
                }
            } catch {
                log("cannot finish the interrupted merge in \(chain.path): \(error); backups into it are refused until it is")
            }
        }
    }

    /// Refuses to read an image of a chain folder that maintenance holds.
    func checkNotUnderMaintenance(_ image: String) throws {
        let folder = canonicalChain((image as NSString).deletingLastPathComponent)
        if let what = jobs.maintenance(of: folder) {
            throw CommandError("\(image) is in chain folder \(folder), which is busy: \(what); try again when it has finished")
        }
    }

    /// A folder argument as an absolute path without symbolic links.
    private func chainFolder(_ path: String, argument: String) throws -> String {
        let folder = canonicalChain(path)
        guard ChainDirectory.isDirectory(folder) else {
            throw CommandError("Parameter '\(argument)': \(path) is not a folder")
        }
        return folder
    }
}
