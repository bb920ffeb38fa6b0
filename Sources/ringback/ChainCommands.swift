import ArgumentParser
import Backup
import Catalog
import ControlProtocol
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where chain maintenance runs: in ringbackd when its socket answers (it then
/// holds the chain against backups and records the catalog), otherwise in
/// this process, on the catalog file of `--state-dir` if there is one.
struct MaintenanceOptions: ParsableArguments {
    @Option(help: "ringbackd's control socket (default: $RINGBACK_SOCKET or /run/ringback/qmp.sock).")
    var socket: String = QMP.socketPath

    @Option(help: ArgumentHelp("Without a running ringbackd: the state directory whose catalog records the change "
                               + "(default: $RINGBACK_STATE_DIR or /var/lib/ringback)."))
    var stateDir: String = ProcessInfo.processInfo.environment["RINGBACK_STATE_DIR"] ?? "/var/lib/ringback"

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    /// A client of the running daemon, or nil when none answers at the socket
    /// (no socket file, or nobody listening). Any other failure ends the command.
    func daemon() -> QMPClient? {
        guard FileManager.default.fileExists(atPath: socket) else { return nil }
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { fail("cannot create a socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socket.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { fail("socket path \(socket) is too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let e = errno
        close(fd)
        if rc != 0 {
            if e == ECONNREFUSED || e == ENOENT { return nil }
            fail("cannot reach ringbackd at \(socket): \(String(cString: strerror(e))); "
                 + "chain maintenance needs it, or no ringbackd running at all")
        }
        do { return try QMPClient(path: socket) } catch { fail("\(error)") }
    }

    /// The catalog of `--state-dir`, when it has one.
    func catalog() -> Catalog? {
        let path = Catalog.defaultPath(stateDirectory: stateDir)
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        do { return try Catalog(path: path) } catch { fail("\(error)") }
    }

    /// Merge hooks for an offline run: the catalog's part, and progress.
    func mergeHooks(_ catalog: Catalog?) -> ChainMergeHooks {
        var hooks = ChainMergeHooks()
        hooks.beforeWriting = { step in
            try catalog?.retireForMerge(fullImage: step.fullPath, incrementalImage: step.incrementalPath)
        }
        hooks.afterMerge = { step, size in
            try catalog?.recordMerge(fullImage: step.fullPath, incrementalImage: step.incrementalPath,
                                     mergedImage: step.mergedPath, imageSize: size)
        }
        #if DEBUG
        // Tests end the process at a named point to prove a crash there loses nothing.
        if let point = ProcessInfo.processInfo.environment["RINGBACK_TEST_CRASH_AT"] {
            hooks.checkpoint = { if $0 == point { _exit(75) } }
        }
        #endif
        return hooks
    }

    func note(_ message: String) { if !json { warn(message) } }
}

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fold the oldest incremental of a chain into its full backup.",
        discussion: """
            The full takes in the oldest incremental's data and its name
            (NNNN-full-TIME.qcow2, the incremental's number and time). The full's
            own point in time is given up; every other restore point of the chain
            stays restorable, also if the merge is interrupted (the next merge, or
            ringbackd's start, finishes it). With --keep N, incrementals are merged
            oldest first until at most N are left.

            Runs in ringbackd when its socket answers (a chain that a backup writes
            into is refused); otherwise here, recording the change in the catalog
            of --state-dir.

            Examples: ringback merge /srv/backup/sdb/chain-1
                      ringback merge /srv/backup/sdb/chain-1 --keep 7 --json
            """)

    @Argument(help: "The chain's folder.") var chain: String
    @Option(help: "Merge until at most this many incrementals are left.") var keep: Int?
    @OptionGroup var options: MaintenanceOptions

    func validate() throws {
        if let keep, keep < 0 { throw ValidationError("--keep must be 0 or more, got \(keep)") }
    }

    func run() throws {
        let folder = absolute(chain)
        guard ChainDirectory.isDirectory(folder) else { fail("chain folder \(chain) does not exist or is not a folder") }
        let dir = ChainDirectory(path: folder)
        var merges: [ChainMergeSummary] = []
        func more() -> Bool {
            FileManager.default.fileExists(atPath: ChainMerge.journalPath(dir)) || ChainMerge.plan(dir, keep: keep ?? 0) != nil
        }
        if let client = options.daemon() {
            repeat {
                var args: [String: JSONValue] = ["chain": .string(folder)]
                if let keep { args["keep-incrementals"] = .int(Int64(keep)) }
                let reply: JSONValue
                do { reply = try client.execute("x-chain-merge", args) } catch {
                    if keep != nil && !more() { break }
                    fail("merge of \(folder) failed: \(error)")
                }
                let summary = decode(ChainMergeSummary.self, reply)
                merges.append(summary)
                if !options.json { print(line(summary)) }
            } while keep != nil && more()
        } else {
            options.note("ringbackd does not answer at \(options.socket): merging here")
            let catalog = options.catalog()
            repeat {
                let hooks = options.mergeHooks(catalog)
                let bar = ProgressBar(control: hooks.progress, label: "merge", enabled: !options.json && isatty(2) != 0)
                bar.start()
                let result: ChainMergeSummary?
                do { result = try ChainMerge.run(dir, keep: keep ?? 0, hooks: hooks) } catch {
                    bar.stop()
                    fail("merge of \(folder) failed: \(error)")
                }
                bar.stop()
                guard let summary = result else {
                    if keep == nil { fail("chain folder \(folder) has no incremental to merge into its full") }
                    break
                }
                merges.append(summary)
                if !options.json { print(line(summary)) }
            } while keep != nil
        }
        let left = ChainMerge.incrementals(dir)
        if options.json {
            printJSON(MergeReport(chain: folder, merges: merges, incrementalsLeft: left))
        } else {
            if merges.isEmpty { print("nothing to merge: \(folder) has \(left) incremental(s), --keep \(keep ?? 0)") }
            print("\(folder): \(left) incremental(s) left")
        }
    }

    private func line(_ s: ChainMergeSummary) -> String {
        let name = { (p: String) in (p as NSString).lastPathComponent }
        var text = (s.recovered ? "finished the interrupted merge of " : "merged ") + name(s.incremental)
            + " into " + name(s.retired) + ": the full is now " + name(s.image)
        if let m = s.merge {
            text += " (\(m.clusters) clusters, \(formatBytes(m.bytesWritten)) written, "
                + String(format: "%.2f s", s.seconds) + ")"
        }
        return text
    }
}

/// `ringback merge --json`.
struct MergeReport: Encodable {
    var chain: String
    var merges: [ChainMergeSummary]
    var incrementalsLeft: Int

    enum CodingKeys: String, CodingKey {
        case chain, merges
        case incrementalsLeft = "incrementals-left"
    }
}

struct RetainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retain",
        abstract: "Apply retention to the chains of one device: merge old incrementals, remove old chains.",
        discussion: """
            DEVICE-DIR holds one folder per chain. The newest --keep-chains chains
            are kept (the newest always) and older ones removed, unless a backup is
            being written into them; in the kept chains, incrementals beyond
            --keep-incrementals are merged into the full, oldest first. Removed and
            merged backups are recorded in the catalog.

            Runs in ringbackd when its socket answers, otherwise here.

            Example: ringback retain /srv/backup/sdb --keep-incrementals 7 --keep-chains 2
            """)

    @Argument(help: "The device's folder, holding its chain folders.") var deviceDir: String
    @Option(help: "Incrementals to keep in each chain (none merged without it).") var keepIncrementals: Int?
    @Option(help: "Chains to keep, at least 1 (none removed without it).") var keepChains: Int?
    @OptionGroup var options: MaintenanceOptions

    func validate() throws {
        if keepIncrementals == nil && keepChains == nil {
            throw ValidationError("give --keep-incrementals, --keep-chains or both")
        }
        if let n = keepIncrementals, n < 0 { throw ValidationError("--keep-incrementals must be 0 or more, got \(n)") }
        if let n = keepChains, n < 1 { throw ValidationError("--keep-chains must be 1 or more, got \(n)") }
    }

    func run() throws {
        let root = absolute(deviceDir)
        guard ChainDirectory.isDirectory(root) else { fail("device folder \(deviceDir) does not exist or is not a folder") }
        let summary: RetentionSummary
        if let client = options.daemon() {
            do {
                var args: [String: JSONValue] = ["chain-root": .string(root)]
                if let keepIncrementals { args["keep-incrementals"] = .int(Int64(keepIncrementals)) }
                if let keepChains { args["keep-chains"] = .int(Int64(keepChains)) }
                let reply = try client.execute("x-chain-retain", args)
                summary = decode(RetentionSummary.self, reply)
            } catch {
                fail("\(error)")
            }
            if !options.json {
                for chain in summary.removedChains { print("removed chain \(chain)") }
                for m in summary.merged { print("merged \(m.incremental) into the full of \(m.chain): now \(m.image)") }
            }
        } else {
            options.note("ringbackd does not answer at \(options.socket): applying retention here")
            let catalog = options.catalog()
            var hooks = ChainRetention.Hooks()
            hooks.merge = { _ in options.mergeHooks(catalog) }
            hooks.beforeRemoving = { chain in try catalog?.removeChain(directory: chain) }
            let json = options.json
            hooks.report = { if !json { print($0) } }
            do {
                summary = try ChainRetention.run(root: root, keepIncrementals: keepIncrementals, keepChains: keepChains,
                                                 hooks: hooks)
            } catch {
                fail("\(error)")
            }
        }
        if options.json {
            printJSON(summary)
        } else {
            for s in summary.skipped { print("skipped \(s.chain): \(s.reason)") }
            for e in summary.errors { print("FAILED \(e.chain): \(e.reason)") }
            print("\(root): kept \(summary.keptChains.count) chain(s), merged \(summary.merged.count) incremental(s), "
                  + "removed \(summary.removedChains.count) chain(s)")
        }
        if !summary.errors.isEmpty { throw ExitCode(1) }
    }
}

/// A daemon reply read as `T`, or the command ends naming what was wrong.
private func decode<T: Decodable>(_: T.Type, _ value: JSONValue) -> T {
    do { return try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value)) } catch {
        fail("ringbackd's reply cannot be read (\(error)): \(value)")
    }
}
