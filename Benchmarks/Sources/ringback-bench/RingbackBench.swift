import ArgumentParser
import Foundation

/// `ringback-bench`: two suites, each measuring in one run and printing the
/// ratios the issues set targets for. `copy` (the default) is issue 2's;
/// `tracking` is issue 3's (write-tracking cost, incremental backups).
@main
struct RingbackBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringback-bench",
        abstract: "Benchmarks of ringback on loop devices.",
        discussion: """
            copy (the default): ringback backup against fio, dd and qemu-img convert. \
            tracking: fio 4k random-write IOPS with write tracking off and on, and an \
            incremental backup from a dirty bitmap against --rescan and a full backup. \
            converge: a converge backup of a live ext4 under a steady fio write load (passes, final freeze).
            """,
        subcommands: [CopySuite.self, TrackingSuite.self, ConvergeSuite.self],
        defaultSubcommand: CopySuite.self)
}

/// `ringback-bench copy`: ringback's full backup against fio, dd and
/// `qemu-img convert` on the same 1 GiB loop devices of random data, in the
/// two set-ups of issue 2 (D and S), with medians and the ratios the issue
/// sets targets for. It measures; it asserts nothing about the numbers.
struct CopySuite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Measure ringback backup against fio, dd and qemu-img convert on loop devices (the default).",
        discussion: """
            Needs root (losetup, /proc/sys/vm/drop_caches), fio, qemu-img and a release \
            build of ringback. Set-up D: loop device with --direct-io=on over a file on \
            disk (--disk-dir), outputs on tmpfs. Set-up S: loop device over a file on \
            tmpfs, outputs on tmpfs. Every loop device and file it makes is removed on \
            exit, also on SIGINT/SIGTERM.
            """)

    @Option(help: "Runs of each tool per set-up; the table shows the median.")
    var runs = 5

    @Option(help: "Size of the source devices (suffix K, M or G; a multiple of 1 MiB).")
    var size = "1G"

    @Option(help: ArgumentHelp("The ringback binary (default: $RINGBACK_BIN, else ../.build/release/ringback from this package).",
                               valueName: "path"))
    var ringback: String?

    @Option(help: "Set-ups to run, comma-separated: D, S.")
    var setups = "D,S"

    @Option(help: "Folder on a disk filesystem (not tmpfs) for the random data and set-up D's backing file.")
    var diskDir = "/var/tmp"

    @Option(help: "Folder on tmpfs for set-up S's backing file and every output.")
    var shmDir = "/dev/shm"

    @Option(help: ArgumentHelp("Where the results go as JSON (default: results/latest.json in this package).",
                               valueName: "path"))
    var output: String?

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1, not \(runs)") }
        let bytes = try parseSize(size, option: "--size")
        guard bytes > 0, bytes % (1 << 20) == 0 else {
            throw ValidationError("--size must be a positive multiple of 1 MiB, not \(size)")
        }
        _ = try parseSetups(setups, option: "--setups")
    }

    mutating func run() throws {
        guard geteuid() == 0 else {
            throw BenchError("ringback-bench attaches loop devices and drops the page cache: run it as root")
        }
        let sizeBytes = try parseSize(size, option: "--size")
        let kinds = try parseSetups(setups, option: "--setups")
        let packageRoot = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let ringbackPath = ringback ?? ProcessInfo.processInfo.environment["RINGBACK_BIN"]
            ?? packageRoot.appendingPathComponent("../.build/release/ringback").standardizedFileURL.path
        let outputPath = output ?? packageRoot.appendingPathComponent("results/latest.json").path

        // Tools that cannot run are reported as such, and the others still run.
        var unavailable: [Tool: String] = [:]
        for tool in Tool.allCases {
            if tool.isRingback {
                if !FileManager.default.isExecutableFile(atPath: ringbackPath) {
                    unavailable[tool] = "no ringback binary at \(ringbackPath) (swift build -c release at the repository root, or --ringback PATH)"
                }
            } else if let program = tool.program, Child.executable(program) == nil {
                unavailable[tool] = "\(program) is not installed (bash scripts/setup.sh)"
            }
        }
        for message in Set(unavailable.values).sorted() { warn(message) }

        Janitor.shared.installSignalHandlers()
        defer { Janitor.shared.cleanUp() }

        let diskDirectory = try makeTemporaryDirectory(in: diskDir)
        let shmDirectory = try makeTemporaryDirectory(in: shmDir)
        let randomData = (diskDirectory as NSString).appendingPathComponent("source-D.img")
        say("writing \(sizeBytes >> 20) MiB of random data to \(randomData)")
        try SourceSetup.writeRandomData(to: randomData, size: sizeBytes)

        let runner = ToolRunner(ringback: ringbackPath, size: sizeBytes, outputDirectory: shmDirectory)
        var cachesDropped = true
        var setupResults: [SetupResults] = []
        for kind in kinds {
            let setup = try SourceSetup.attach(kind, randomData: randomData, shmDirectory: shmDirectory)
            say("\n\(kind.title): \(setup.device) over \(setup.backingFile)\(setup.directIO ? " (direct I/O on)" : "")")
            var results = Dictionary(uniqueKeysWithValues: Tool.allCases.map { tool in
                (tool, ToolResults(tool: tool.rawValue, command: runner.command(tool, device: setup.device).joined(separator: " "),
                                   mbPerS: [], wallMbPerS: [], error: unavailable[tool]))
            })
            for run in 0..<runs {
                // Each run starts with a different tool, so that no tool always
                // follows the same one.
                let order = Tool.allCases.indices.map { Tool.allCases[($0 + run) % Tool.allCases.count] }
                for tool in order where results[tool]?.error == nil {
                    runner.removeOutputs()
                    if !dropCaches() && cachesDropped {
                        cachesDropped = false
                        warn("cannot write /proc/sys/vm/drop_caches: runs may read from the page cache")
                    }
                    runner.warmUp(tool, device: setup.device)
                    do {
                        let m = try runner.measure(tool, device: setup.device)
                        results[tool]!.mbPerS.append(m.reportedMBps)
                        results[tool]!.wallMbPerS.append(m.wallMBps)
                        say("  (\(kind.rawValue)) run \(run + 1)/\(runs)  \(tool.label): "
                              + String(format: "%.0f MB/s", m.reportedMBps)
                              + (tool.isRingback ? String(format: " (wall %.0f)", m.wallMBps) : ""))
                    } catch {
                        results[tool]!.error = "\(error)"
                        warn("(\(kind.rawValue)) \(tool.label) failed, no more runs of it in this set-up: \(error)")
                    }
                }
            }
            runner.removeOutputs()
            setupResults.append(SetupResults(
                setup: kind.rawValue, description: kind.title, device: setup.device, directIO: setup.directIO,
                tools: Tool.allCases.map { tool in
                    var r = results[tool]!
                    r.medianMbPerS = median(r.mbPerS)
                    r.wallMedianMbPerS = median(r.wallMbPerS)
                    return r
                }))
        }

        let results = BenchResults(
            date: ISO8601DateFormatter().string(from: Date()),
            kernel: (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown",
            cpus: ProcessInfo.processInfo.activeProcessorCount,
            sizeBytes: sizeBytes, runs: runs, ringback: ringbackPath, cachesDropped: cachesDropped,
            setups: setupResults, ratios: BenchResults.ratios(of: setupResults))
        say(results.table())
        try writeResults(results, to: outputPath)
        say("\nresults: \(outputPath)")

        let failed = setupResults.flatMap { s in s.tools.filter { $0.error != nil }.map { "(\(s.setup)) \($0.tool)" } }
        if !failed.isEmpty {
            warn("no result for: \(failed.joined(separator: ", ")) (see the messages above)")
            throw ExitCode(1)
        }
    }

}

/// Makes a fresh folder `ringback-bench.XXXXXX` under `base`, removed on exit.
func makeTemporaryDirectory(in base: String) throws -> String {
    var template = Array("\(base)/ringback-bench.XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else {
        let reason = String(cString: strerror(errno))
        throw BenchError("cannot make a folder in \(base): \(reason)")
    }
    let path = String(cString: made)
    Janitor.shared.adopt(path: path)
    return path
}

/// A failure of the benchmark itself, printed as its message.
struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
