import ArgumentParser
import Foundation

/// `ringback-bench tracking`: issue 3, item 7, in one run.
///
/// (a) The cost of write tracking: fio 4k random-write IOPS on a loop device
/// with the device not tracked, then tracked by ringbackd with a bitmap,
/// alternating, medians, on/off.
/// (b) The cost of an incremental backup: on a device of random data with a
/// full backup in its chain, 1% of the 64 KiB clusters is dirtied; the same
/// change is backed up from the bitmap and by `--rescan` (onto a hard-linked
/// copy of the same chain), and a full backup is taken; times and ratios.
///
/// It measures; it asserts nothing about the numbers. It does fail (exit 1)
/// when a step fails or a check of the results does not hold: a bitmap count
/// other than the dirtied clusters, a backup that read the wrong amount, an
/// image that differs from the device.
struct TrackingSuite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tracking",
        abstract: "Measure the cost of write tracking (fio IOPS off/on) and of incremental backups (bitmap, --rescan, full).",
        discussion: """
            Needs root, fio, qemu-img, and a release build of ringback and ringbackd. Starts a \
            private ringbackd (socket and state in a temporary folder under --shm-dir). \
            (a) fio randwrite bs=4k iodepth=32 io_uring direct=1 on a loop device, tracking off \
            and on alternately, in set-up D (loop --direct-io=on over a file in --disk-dir) and S \
            (loop over a file in --shm-dir). (b) a --size device of random data (loop \
            --direct-io=on over a file in --disk-dir): full backup, then per round --dirty-percent \
            of its 64 KiB clusters dirtied, the incremental from the bitmap and --rescan of the same \
            change, and a full backup, each timed after dropping the page cache. Every loop device, \
            file, folder, bitmap and tracefs instance it makes is removed when it ends, also on \
            SIGINT/SIGTERM/SIGHUP.
            """)

    @Option(help: "(a) fio runs with tracking off, and as many with it on, alternating.")
    var runs = 3

    @Option(help: "(a) Seconds of each fio run.")
    var runtime = 10

    @Option(help: "(a) Seconds of an untimed fio run on each device before the measured ones (0: none).")
    var warmup = 3

    @Option(help: "(a) Size of the fio devices (suffix K, M or G; a multiple of 1 MiB).")
    var fioSize = "1G"

    @Option(help: "(a) Set-ups, comma-separated: D (loop --direct-io=on over a file in --disk-dir), S (loop over a file in --shm-dir).")
    var fioSetups = "D,S"

    @Option(help: "(b) Size of the device (suffix K, M or G; a multiple of 1 MiB).")
    var size = "4G"

    @Option(help: "(b) Percentage of the 64 KiB clusters dirtied before each round.")
    var dirtyPercent = 1.0

    @Option(help: "(b) Rounds: dirty, back up from the bitmap and by --rescan, take a full backup.")
    var rounds = 3

    @Option(help: "Parts to run, comma-separated: iops (a), incremental (b).")
    var parts = "iops,incremental"

    @Option(help: ArgumentHelp("The ringback binary (default: $RINGBACK_BIN, else ../.build/release/ringback from this package).",
                               valueName: "path"))
    var ringback: String?

    @Option(help: ArgumentHelp("The ringbackd binary (default: $RINGBACKD_BIN, else ringbackd beside the ringback binary).",
                               valueName: "path"))
    var ringbackd: String?

    @Option(help: "Folder on a disk filesystem (not tmpfs) for the backing files of D and (b).")
    var diskDir = "/var/tmp"

    @Option(help: "Folder on tmpfs for S's backing file and the daemon's socket and state.")
    var shmDir = "/dev/shm"

    @Option(help: ArgumentHelp("(b) Folder for the backup chains (default: --shm-dir, so that the times are the device's and not the repository's).",
                               valueName: "dir"))
    var targetDir: String?

    @Flag(help: "(b) Skip the qemu-img compare of the new images with the device.")
    var noVerify = false

    @Option(help: ArgumentHelp("Where the results go as JSON (default: results/tracking.json in this package).",
                               valueName: "path"))
    var output: String?

    enum Part: String { case iops, incremental }

    static let clusterSize = 64 << 10

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1, not \(runs)") }
        guard runtime >= 1 else { throw ValidationError("--runtime must be at least 1 second, not \(runtime)") }
        guard warmup >= 0 else { throw ValidationError("--warmup must not be negative") }
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1, not \(rounds)") }
        guard dirtyPercent > 0, dirtyPercent <= 100 else {
            throw ValidationError("--dirty-percent must be more than 0 and at most 100, not \(dirtyPercent)")
        }
        for (text, name) in [(fioSize, "--fio-size"), (size, "--size")] {
            let bytes = try parseSize(text, option: name)
            guard bytes > 0, bytes % (1 << 20) == 0 else {
                throw ValidationError("\(name) must be a positive multiple of 1 MiB, not \(text)")
            }
        }
        _ = try parsedParts()
        _ = try parseSetups(fioSetups, option: "--fio-setups")
    }

    mutating func run() throws {
        guard geteuid() == 0 else {
            throw BenchError("ringback-bench tracking attaches loop devices, runs ringbackd and drops the page cache: run it as root")
        }
        Janitor.shared.installSignalHandlers()
        defer { Janitor.shared.cleanUp() }

        let wanted = try parsedParts()
        let kinds = try parseSetups(fioSetups, option: "--fio-setups")
        let packageRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let environment = ProcessInfo.processInfo.environment
        let ringbackPath = ringback ?? environment["RINGBACK_BIN"]
            ?? packageRoot.appendingPathComponent("../.build/release/ringback").standardizedFileURL.path
        let ringbackdPath = ringbackd ?? environment["RINGBACKD_BIN"]
            ?? ((ringbackPath as NSString).deletingLastPathComponent as NSString).appendingPathComponent("ringbackd")
        let outputPath = output ?? packageRoot.appendingPathComponent("results/tracking.json").path

        var missing: [String] = []
        for (path, what) in [(ringbackPath, "ringback"), (ringbackdPath, "ringbackd")]
        where !FileManager.default.isExecutableFile(atPath: path) {
            missing.append("no \(what) binary at \(path) (swift build -c release at the repository root, or --\(what) PATH)")
        }
        var programs = ["losetup", "dd"]
        if wanted.contains(.iops) { programs.append("fio") }
        if wanted.contains(.incremental) && !noVerify { programs.append("qemu-img") }
        for program in programs where Child.executable(program) == nil {
            missing.append("\(program) is not installed (bash scripts/setup.sh)")
        }
        guard missing.isEmpty else { throw BenchError(missing.joined(separator: "; ")) }

        let diskTemp = try makeTemporaryDirectory(in: diskDir)
        let shmTemp = try makeTemporaryDirectory(in: shmDir)
        let targetTemp = try targetDir.map { try makeTemporaryDirectory(in: $0) } ?? shmTemp

        var results = TrackingResults(
            date: ISO8601DateFormatter().string(from: Date()),
            kernel: (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown",
            cpus: ProcessInfo.processInfo.activeProcessorCount,
            ringback: ringbackPath, ringbackd: ringbackdPath, cachesDropped: true)

        let daemon = DaemonProcess(binary: ringbackdPath, ringback: ringbackPath, folder: shmTemp)
        Janitor.shared.adopt(cleanUp: { daemon.stop(cleanUp: true) })
        say("starting \(ringbackdPath) on \(daemon.socket)")
        try daemon.start()

        var run = Run(daemon: daemon)
        if wanted.contains(.iops) {
            results.iops = run.measureIOPS(kinds: kinds, size: try parseSize(fioSize, option: "--fio-size"),
                                           runs: runs, runtime: runtime, warmup: warmup,
                                           diskDirectory: diskTemp, shmDirectory: shmTemp)
        }
        if wanted.contains(.incremental) {
            results.incremental = run.measureIncremental(
                size: try parseSize(size, option: "--size"), dirtyPercent: dirtyPercent, rounds: rounds,
                verify: !noVerify, diskDirectory: diskTemp, targetDirectory: targetTemp)
        }
        results.problems = run.problems
        results.cachesDropped = run.cachesDropped

        say("\nstopping ringbackd")
        results.daemonStoppedBySigterm = daemon.stop(cleanUp: false)
        if results.daemonStoppedBySigterm == false {
            results.problems.append("ringbackd did not exit within 5 s of SIGTERM and was killed with SIGKILL")
        }
        results.computeRatios()
        say(results.table())
        try writeResults(results, to: outputPath)
        say("\nresults: \(outputPath)")
        if !results.problems.isEmpty { throw ExitCode(1) }
    }

    private func parsedParts() throws -> Set<Part> {
        let list = try parts.split(separator: ",").map { name in
            guard let part = Part(rawValue: name.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw ValidationError("--parts: unknown part '\(name)' (iops, incremental)")
            }
            return part
        }
        guard !list.isEmpty else { throw ValidationError("--parts: name at least one of iops, incremental") }
        return Set(list)
    }

}

/// The state of one run of the suite: the daemon, what went wrong, and
/// whether the page cache could be dropped.
private struct Run {
    let daemon: DaemonProcess
    var problems: [String] = []
    var cachesDropped = true

    init(daemon: DaemonProcess) {
        self.daemon = daemon
    }

    mutating func dropPageCache() {
        if !dropCaches() && cachesDropped {
            cachesDropped = false
            warn("cannot write /proc/sys/vm/drop_caches: runs may read from the page cache")
        }
    }

    /// Drops the page cache before a timed backup, then reads the programs
    /// back in: `ringback qmp query-version` loads the CLI's executable and
    /// libraries and wakes the daemon's socket path. The backup then starts
    /// with the device's data cold, as it should, but not with a cold
    /// executable, which dropping the cache does and a running daemon never
    /// sees (the copy suite warms its tools the same way).
    mutating func dropPageCacheBeforeBackup() {
        dropPageCache()
        _ = try? daemon.cli(["qmp", "query-version"])
    }

    // MARK: (a) tracking cost

    static let iopsBitmap = "bench-iops"

    static func fioCommand(device: String, runtime: Int) -> [String] {
        ["fio", "--name=w", "--filename=\(device)", "--rw=randwrite", "--bs=4k", "--iodepth=32",
         "--ioengine=io_uring", "--direct=1", "--runtime=\(runtime)", "--time_based", "--output-format=json"]
    }

    mutating func measureIOPS(kinds: [SourceSetup.Kind], size: UInt64, runs: Int, runtime: Int, warmup: Int,
                              diskDirectory: String, shmDirectory: String) -> IOPSResults {
        var all = IOPSResults(command: Self.fioCommand(device: "DEV", runtime: runtime).joined(separator: " "),
                              runtimeSeconds: runtime, warmupSeconds: warmup, runsEach: runs, setups: [])
        for kind in kinds {
            let backing = ((kind == .disk ? diskDirectory : shmDirectory) as NSString)
                .appendingPathComponent("fio-\(kind.rawValue).img")
            let description = kind == .disk ? "loop dio, file on disk" : "loop, file on tmpfs"
            var setup = IOPSSetup(setup: kind.rawValue, description: description, device: "-", backingFile: backing,
                                  directIO: false, sizeBytes: size)
            var device: String?
            do {
                // Written out in full, so that no run pays for allocating blocks.
                say("\n(a) (\(kind.rawValue)) writing \(size >> 20) MiB of zeros to \(backing)")
                try Child.check(["dd", "if=/dev/zero", "of=\(backing)", "bs=1M", "count=\(size >> 20)",
                                 "conv=fsync", "status=none"])
                let attached = try attachLoop(backing, directIO: kind == .disk)
                device = attached.device
                setup.device = attached.device
                setup.directIO = attached.directIO
                if kind == .disk && !attached.directIO {
                    problems.append("(\(kind.rawValue)) \(attached.device): the loop driver did not turn on direct I/O")
                }
                if warmup > 0 {
                    say("  (\(kind.rawValue)) \(attached.device): warm-up, \(warmup) s of fio (not counted)")
                    _ = try fioIOPS(device: attached.device, runtime: warmup)
                }
                for round in 0..<runs {
                    // off, on, then on, off: neither state always runs first.
                    for tracking in round % 2 == 0 ? [false, true] : [true, false] {
                        let measured = try oneFioRun(device: attached.device, tracking: tracking, runtime: runtime)
                        setup.runs.append(measured)
                        var line = "  (\(kind.rawValue)) run \(round + 1)/\(runs) tracking \(tracking ? "on " : "off"): "
                            + String(format: "%.0f IOPS", measured.iops)
                        if let cpu = measured.daemonCpuPercent { line += String(format: ", ringbackd %.1f%% CPU", cpu) }
                        if tracking {
                            line += ", bitmap count \((measured.bitmapCountBytes ?? 0) >> 20) MiB"
                            if measured.inconsistent != false { line += ", EVENTS LOST (bitmap inconsistent)" }
                        }
                        say(line)
                    }
                }
            } catch {
                // A signal stopped the child: the handler is cleaning up and ends the process.
                if Janitor.shared.isStopping { Janitor.parkForever() }
                setup.error = "\(error)"
                problems.append("(a) (\(kind.rawValue)) \(error)")
                warn("(a) (\(kind.rawValue)) failed: \(error)")
                // The bitmap and the tracking go before the device does.
                if let device {
                    try? daemon.removeBitmap(device: device, name: Self.iopsBitmap)
                    try? daemon.untrack(device: device)
                }
            }
            setup.medianOff = median(setup.off)
            setup.medianOn = median(setup.on)
            for r in setup.runs where r.tracking && r.inconsistent != false {
                problems.append("(a) (\(kind.rawValue)) the tracker lost events in a run with tracking on: that run's bitmap is inconsistent")
                break
            }
            all.setups.append(setup)
            if let device { Janitor.shared.detachNow(loopDevice: device) }
            Janitor.shared.removeNow(path: backing)
        }
        return all
    }

    /// One fio run; with tracking on, the device is tracked (one bitmap)
    /// only for this run, so that the runs with it off see no tracefs
    /// instance at all.
    mutating func oneFioRun(device: String, tracking: Bool, runtime: Int) throws -> IOPSRun {
        let instance = DaemonProcess.instancePath(disk: (device as NSString).lastPathComponent)
        if tracking {
            try daemon.addBitmap(device: device, name: Self.iopsBitmap, granularity: TrackingSuite.clusterSize)
        } else if FileManager.default.fileExists(atPath: instance) {
            throw BenchError("\(instance) exists during a run with tracking off")
        }
        dropPageCache()
        let cpuBefore = daemon.cpuSeconds()
        let clock = ContinuousClock(), start = clock.now
        let iops = try fioIOPS(device: device, runtime: runtime)
        let elapsed = start.duration(to: clock.now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        var run = IOPSRun(tracking: tracking, iops: iops)
        if let before = cpuBefore, let after = daemon.cpuSeconds(), seconds > 0 {
            run.daemonCpuPercent = (after - before) / seconds * 100
        }
        if tracking {
            try daemon.barrier(device: device)
            let bitmap = try daemon.bitmaps(device: device).first { $0.name == Self.iopsBitmap }
            run.bitmapCountBytes = bitmap?.count
            run.inconsistent = bitmap?.inconsistent ?? true
            try daemon.removeBitmap(device: device, name: Self.iopsBitmap)
            try daemon.untrack(device: device)
            if FileManager.default.fileExists(atPath: instance) {
                throw BenchError("\(instance) is still there after the bitmap was removed and \(device) untracked")
            }
        }
        return run
    }

    func fioIOPS(device: String, runtime: Int) throws -> Double {
        let args = Self.fioCommand(device: device, runtime: runtime)
        let result = try Child.check(args)
        guard let json = jsonObject(result.stdout), let jobs = json["jobs"] as? [[String: Any]],
              let write = jobs.first?["write"] as? [String: Any], let iops = write["iops"] as? NSNumber,
              iops.doubleValue > 0
        else { throw ChildFailure(command: args, reason: "printed no jobs[0].write.iops: \(result.stdout.prefix(200))") }
        return iops.doubleValue
    }

    // MARK: (b) incremental cost

    static let incrementalBitmap = "bench-inc"
    static let rescanBitmap = "bench-rescan"

    mutating func measureIncremental(size: UInt64, dirtyPercent: Double, rounds: Int, verify: Bool,
                                     diskDirectory: String, targetDirectory: String) -> IncrementalResults {
        let clusterSize = TrackingSuite.clusterSize
        let clusters = Int(size / UInt64(clusterSize))
        let dirty = max(1, min(clusters, Int((Double(clusters) * dirtyPercent / 100).rounded())))
        let backing = (diskDirectory as NSString).appendingPathComponent("source-inc.img")
        var inc = IncrementalResults(device: "-", backingFile: backing, directIO: false, targetDirectory: targetDirectory,
                                     sizeBytes: size, clusterSize: clusterSize, clusters: clusters,
                                     dirtyClustersPerRound: dirty)
        var device: String?
        do {
            let chain = (targetDirectory as NSString).appendingPathComponent("chain")
            // The chain and one full backup of random data, which does not compress.
            try checkSpace(diskDirectory, need: size, for: "the (b) source file")
            try checkSpace(targetDirectory, need: 2 * size + (size >> 4), for: "the (b) chain and a second full backup")
            say("\n(b) writing \(size >> 20) MiB of random data to \(backing) (this takes a while)")
            try SourceSetup.writeRandomData(to: backing, size: size)
            let attached = try attachLoop(backing, directIO: true)
            device = attached.device
            inc.device = attached.device
            inc.directIO = attached.directIO
            if !attached.directIO { problems.append("(b) \(attached.device): the loop driver did not turn on direct I/O") }
            try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: false)

            say("(b) \(attached.device): full backup into \(chain) (starts the chain; not timed)")
            dropPageCacheBeforeBackup()
            _ = try timedBackup(["backup", attached.device, "--sync", "full", "--to", chain, "--json"], kind: .full,
                                size: size, dirtyBytes: 0)
            // One bitmap for each kind of incremental: each backup syncs (clears) its own.
            for name in [Self.incrementalBitmap, Self.rescanBitmap] {
                try daemon.addBitmap(device: attached.device, name: name, granularity: clusterSize)
            }

            for round in 1...rounds {
                var r = IncrementalRound(round: round)
                let indices = try DeviceDirtier.dirty(device: attached.device, size: size, clusterSize: clusterSize, count: dirty)
                try daemon.barrier(device: attached.device)
                let expected = UInt64(indices.count * clusterSize)
                for b in try daemon.bitmaps(device: attached.device) {
                    r.bitmapCounts[b.name] = b.count
                    if b.count != expected || b.inconsistent {
                        problems.append("(b) round \(round): bitmap '\(b.name)' counts \(b.count) bytes"
                                        + (b.inconsistent ? " and is inconsistent" : "")
                                        + " after \(indices.count) clusters were dirtied (expected \(expected))")
                    }
                }
                say("(b) round \(round)/\(rounds): dirtied \(indices.count) clusters; bitmap counts "
                    + r.bitmapCounts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))

                // The rescan gets a copy of the chain as it is now (hard links:
                // no data is copied), so that both incrementals back up the
                // same change onto the same previous image.
                let rescanChain = (targetDirectory as NSString).appendingPathComponent("rescan-\(round)")
                defer { Janitor.shared.removeNow(path: rescanChain) }
                try linkCopy(of: chain, to: rescanChain)

                let order: [BackupKind] = round % 2 == 1 ? [.incremental, .rescan] : [.rescan, .incremental]
                r.order = order.map(\.rawValue)
                for kind in order {
                    dropPageCacheBeforeBackup()
                    let timing: BackupTiming
                    if kind == .incremental {
                        timing = try timedBackup(["backup", attached.device, "--sync", "incremental",
                                                  "--bitmap", Self.incrementalBitmap, "--to", chain, "--json"],
                                                 kind: kind, size: size, dirtyBytes: expected)
                        r.incremental = timing
                    } else {
                        timing = try timedBackup(["backup", attached.device, "--sync", "incremental",
                                                  "--bitmap", Self.rescanBitmap, "--rescan", "--to", rescanChain, "--json"],
                                                 kind: kind, size: size, dirtyBytes: expected)
                        r.rescan = timing
                    }
                    say("  \(kind.label): " + String(format: "%.3f s wall, %.3f s reported", timing.wallSeconds,
                                                      timing.reportedSeconds ?? .nan))
                }

                if verify {
                    var identical = true
                    for folder in [chain, rescanChain] {
                        guard let image = newestImage(in: folder) else { throw BenchError("no image in \(folder)") }
                        let compare = try Child.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", image, attached.device])
                        if compare.status != 0 {
                            identical = false
                            problems.append("(b) round \(round): qemu-img compare \(image) \(attached.device): "
                                            + (compare.status == 1 ? "images differ" : "failed (\(compare.stderr.prefix(200)))"))
                        }
                    }
                    r.identical = identical
                    say("  qemu-img compare with the device: \(identical ? "both identical" : "DIFFERENT")")
                }

                let fullFolder = (targetDirectory as NSString).appendingPathComponent("full-\(round)")
                defer { Janitor.shared.removeNow(path: fullFolder) }
                try FileManager.default.createDirectory(atPath: fullFolder, withIntermediateDirectories: false)
                dropPageCacheBeforeBackup()
                r.full = try timedBackup(["backup", attached.device, "--sync", "full", "--to", fullFolder, "--json"],
                                         kind: .full, size: size, dirtyBytes: 0)
                say("  full backup: " + String(format: "%.3f s wall, %.3f s reported", r.full!.wallSeconds,
                                               r.full!.reportedSeconds ?? .nan))
                inc.rounds.append(r)
            }
            for name in [Self.incrementalBitmap, Self.rescanBitmap] {
                try daemon.removeBitmap(device: attached.device, name: name)
            }
            try daemon.untrack(device: attached.device)
        } catch {
            if Janitor.shared.isStopping { Janitor.parkForever() }
            inc.error = "\(error)"
            problems.append("(b) \(error)")
            warn("(b) failed: \(error)")
        }
        for kind in BackupKind.allCases {
            let timings = inc.rounds.compactMap { r -> BackupTiming? in
                switch kind { case .incremental: r.incremental; case .rescan: r.rescan; case .full: r.full }
            }
            inc.medianWallSeconds[kind.rawValue] = median(timings.map(\.wallSeconds))
            inc.medianReportedSeconds[kind.rawValue] = median(timings.compactMap(\.reportedSeconds))
        }
        // The bitmaps and the tracking go before the device does.
        if inc.error != nil, let device {
            for name in [Self.incrementalBitmap, Self.rescanBitmap] {
                try? daemon.removeBitmap(device: device, name: name)
            }
            try? daemon.untrack(device: device)
        }
        if let device { Janitor.shared.detachNow(loopDevice: device) }
        Janitor.shared.removeNow(path: backing)
        return inc
    }

    /// Runs one `ringback backup … --json` through the daemon, checks what
    /// it read against what it should have, and returns its times.
    mutating func timedBackup(_ args: [String], kind: BackupKind, size: UInt64, dirtyBytes: UInt64) throws -> BackupTiming {
        let result = try daemon.cli(args)
        guard let reply = jsonObject(result.stdout) else {
            throw BenchError("ringback \(args.joined(separator: " ")) printed no JSON: \(result.stdout.prefix(200))")
        }
        let summary = reply["backup"] as? [String: Any] ?? reply
        let number = { (d: [String: Any], key: String) in (d[key] as? NSNumber) }
        var timing = BackupTiming(wallSeconds: result.seconds)
        timing.reportedSeconds = number(summary, "seconds")?.doubleValue
        timing.bytesRead = number(summary, "bytes_read")?.uint64Value
        timing.bytesWritten = number(summary, "bytes_written")?.uint64Value
        timing.unchangedBytes = number(reply, "unchanged_bytes")?.uint64Value
        timing.mode = reply["mode"] as? String
        timing.image = summary["image"] as? String

        var wrong: [String] = []
        switch kind {
        case .incremental:
            if timing.mode != "bitmap" { wrong.append("mode \(timing.mode ?? "none"), not bitmap") }
            if timing.bytesRead != dirtyBytes { wrong.append("read \(timing.bytesRead ?? 0) bytes, not the \(dirtyBytes) dirtied") }
        case .rescan:
            if timing.mode != "rescan" { wrong.append("mode \(timing.mode ?? "none"), not rescan") }
            if timing.bytesRead != size { wrong.append("read \(timing.bytesRead ?? 0) bytes of \(size)") }
            if let unchanged = timing.unchangedBytes, unchanged != size - dirtyBytes {
                wrong.append("found \(size - unchanged) bytes changed, not the \(dirtyBytes) dirtied")
            }
        case .full:
            if timing.bytesRead != size { wrong.append("read \(timing.bytesRead ?? 0) bytes of \(size)") }
        }
        if !wrong.isEmpty { problems.append("(b) \(kind.label): " + wrong.joined(separator: "; ")) }
        return timing
    }

    // MARK: helpers

    func attachLoop(_ file: String, directIO: Bool) throws -> (device: String, directIO: Bool) {
        let args = ["losetup", "--find", "--show"] + (directIO ? ["--direct-io=on"] : []) + [file]
        let device = try Child.check(args).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        Janitor.shared.adopt(loopDevice: device)
        let name = (device as NSString).lastPathComponent
        let dio = (try? String(contentsOfFile: "/sys/block/\(name)/loop/dio", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) == "1"
        return (device, dio)
    }

    /// A folder holding hard links to every file of `source`.
    func linkCopy(of source: String, to destination: String) throws {
        try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: false)
        for name in try FileManager.default.contentsOfDirectory(atPath: source) {
            let from = (source as NSString).appendingPathComponent(name)
            let to = (destination as NSString).appendingPathComponent(name)
            guard link(from, to) == 0 else {
                throw BenchError("cannot link \(from) to \(to): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// The newest image of a chain folder (`<seq>-full|inc-<UTC>.qcow2`).
    func newestImage(in folder: String) -> String? {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.filter { $0.hasSuffix(".qcow2") }.sorted().last.map { (folder as NSString).appendingPathComponent($0) }
    }

    func checkSpace(_ folder: String, need: UInt64, for what: String) throws {
        var fs = statvfs()
        guard statvfs(folder, &fs) == 0 else { return }
        let free = UInt64(fs.f_bavail) * UInt64(fs.f_frsize)
        if free < need {
            throw BenchError("\(folder) has \(free >> 20) MiB free; \(what) needs \(need >> 20) MiB "
                             + "(a smaller --size, or another --disk-dir / --target-dir)")
        }
    }
}

/// The JSON object in a tool's stdout; fio may print notes before it.
func jsonObject(_ text: String) -> [String: Any]? {
    guard let open = text.firstIndex(of: "{"), let close = text.lastIndex(of: "}"),
          let object = try? JSONSerialization.jsonObject(with: Data(text[open...close].utf8))
    else { return nil }
    return object as? [String: Any]
}
