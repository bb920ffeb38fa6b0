import ArgumentParser
import Foundation

/// `ringback-bench converge`: issue 5's measure. A 1 GiB loop device holds
/// ext4 filled to three quarters with random data; fio writes to a file in it at a fixed
/// rate while ringbackd takes an `x-consistency: converge` backup. For each
/// write rate (a fraction of the copy rate measured first, with no load) it
/// reports the backup's wall time, the passes, the bytes copied in the final
/// freeze, and how long the filesystem stayed frozen. It measures; it
/// asserts nothing.
struct ConvergeSuite: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "converge",
        abstract: "Measure converge backups of a live ext4 under a steady fio write load.",
        discussion: """
            Needs root, fio, mkfs.ext4 and a release build of ringback and ringbackd. The device \
            is a loop device with --direct-io=on over a file in --disk-dir; images go to \
            --shm-dir. Target (issue 5): the final freeze stays under 1 s while the write rate \
            is below half the copy rate.
            """)

    @Option(help: "Size of the device (suffix K, M or G; a multiple of 1 MiB).")
    var size = "1G"

    @Option(help: "Write rates to run, as fractions of the measured copy rate, comma-separated.")
    var loads = "0.1,0.25,0.45"

    @Option(help: "Converge threshold in MiB: passes go on while more than this is dirty.")
    var thresholdMib = 16

    @Option(help: "Folder on a disk filesystem for the device's backing file.")
    var diskDir = "/var/tmp"

    @Option(help: "Folder on tmpfs for the images.")
    var shmDir = "/dev/shm"

    @Option(help: ArgumentHelp("The ringback binary (default: $RINGBACK_BIN, else ../.build/release/ringback).", valueName: "path"))
    var ringback: String?

    @Option(help: ArgumentHelp("Where the results go as JSON (default: results/converge.json in this package).", valueName: "path"))
    var output: String?

    mutating func run() throws {
        guard geteuid() == 0 else { throw BenchError("ringback-bench converge needs root (loop devices, mount, fsfreeze)") }
        let bytes = try parseSize(size, option: "--size")
        let fractions = try loads.split(separator: ",").map { s -> Double in
            guard let f = Double(s), f > 0, f < 1 else { throw ValidationError("--loads: '\(s)' is not a fraction between 0 and 1") }
            return f
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let cli = ringback ?? ProcessInfo.processInfo.environment["RINGBACK_BIN"]
            ?? root.appendingPathComponent("../.build/release/ringback").standardizedFileURL.path
        let daemonBinary = (cli as NSString).deletingLastPathComponent + "/ringbackd"
        for tool in [cli, daemonBinary] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw BenchError("\(tool) is missing: run `swift build -c release` in the repository first")
        }
        Janitor.shared.installSignalHandlers()
        defer { Janitor.shared.cleanUp() }

        let work = try Child.check(["mktemp", "-d", shmDir + "/ringback-converge.XXXXXX"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        Janitor.shared.adopt(path: work)
        let backing = diskDir + "/ringback-converge-\(getpid()).img"
        Janitor.shared.adopt(path: backing)
        try Child.check(["truncate", "-s", String(bytes), backing])
        let device = try Child.check(["losetup", "--find", "--show", "--direct-io=on", backing]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        Janitor.shared.adopt(loopDevice: device)
        let mount = work + "/mnt"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        try Child.check(["mkfs.ext4", "-q", "-F", device])
        try Child.check(["mount", device, mount])
        Janitor.shared.adopt(cleanUp: {
            _ = try? Child.run(["fsfreeze", "-u", mount], cleanUp: true)
            _ = try? Child.run(["umount", "-l", mount], cleanUp: true)
        })
        say("filling \(mount) on \(device) with \((bytes / 4 * 3) >> 20) MiB of random data")
        try Child.check(["fio", "--name=fill", "--filename=\(mount)/data", "--size=\((bytes / 4 * 3) >> 20)M", "--rw=write",
                         "--bs=1M", "--direct=1", "--refill_buffers", "--output=/dev/null"])
        try FileManager.default.createDirectory(atPath: work + "/hooks", withIntermediateDirectories: true)

        let daemon = DaemonProcess(binary: daemonBinary, ringback: cli, folder: work)
        Janitor.shared.adopt(cleanUp: { daemon.stop(cleanUp: true) })
        try daemon.startWith(["--hooks-dir", work + "/hooks"])

        // The copy rate with no load: a plain live backup.
        let idle = try backup(daemon, device: device, chain: work + "/idle", converge: false)
        let copyRate = Double(idle.bytesRead) / idle.copySeconds
        say(String(format: "copy rate with no load: %.0f MB/s (%.0f MiB in %.2f s)", copyRate / 1e6,
                   Double(idle.bytesRead) / 1048576, idle.copySeconds))

        var rows: [[String: Any]] = []
        for (i, fraction) in fractions.enumerated() {
            let rateMiB = max(1, Int(copyRate * fraction / 1048576))
            let report = work + "/fio-\(i).json"
            let load = try startLoad(mount: mount, rateMiB: rateMiB, report: report)
            Thread.sleep(forTimeInterval: 2)
            let result = try backup(daemon, device: device, chain: work + "/load\(i)", converge: true)
            load.terminate()
            load.waitUntilExit()
            // What fio really wrote over its whole run (it may not reach the cap).
            let achieved = Self.fioWriteRate(report) ?? 0
            say(String(format: "load %.0f%% of copy rate (cap %d MiB/s, achieved %.0f MB/s = %.0f%% of the copy rate): wall %.2f s, "
                       + "%d passes, final pass %.1f MiB, frozen %.3f s (quiesce %.3f s)",
                       fraction * 100, rateMiB, achieved / 1e6, achieved / copyRate * 100, result.wall, result.passes,
                       Double(result.finalBytes) / 1048576, result.frozen, result.quiesce))
            rows.append(["load-fraction": fraction, "write-rate-cap-mib-s": rateMiB, "achieved-write-mb-s": achieved / 1e6,
                         "achieved-fraction-of-copy-rate": achieved / copyRate, "wall-seconds": result.wall,
                         "passes": result.passes, "final-bytes": result.finalBytes, "frozen-seconds": result.frozen,
                         "quiesce-seconds": result.quiesce, "frozen-under-1s": result.frozen < 1])
        }
        let out = output ?? root.appendingPathComponent("results/converge.json").path
        try FileManager.default.createDirectory(atPath: (out as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let json: [String: Any] = ["device-bytes": bytes, "copy-rate-mb-s": copyRate / 1e6, "threshold-mib": thresholdMib, "runs": rows]
        try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: out))
        say("results: \(out)")
    }

    struct Result { var wall: Double; var bytesRead: UInt64; var copySeconds: Double; var passes: Int
                    var finalBytes: UInt64; var frozen: Double; var quiesce: Double }

    /// One full backup through `ringback transaction`, timed; converge or live.
    private func backup(_ daemon: DaemonProcess, device: String, chain: String, converge: Bool) throws -> Result {
        try FileManager.default.createDirectory(atPath: chain, withIntermediateDirectories: true)
        var data: [String: Any] = ["device": device, "target": chain, "sync": "full", "job-id": "bench"]
        if converge {
            data["x-consistency"] = "converge"
            data["auto-complete"] = true
            data["x-converge"] = ["threshold": thresholdMib << 20]
        }
        let file = chain + ".json"
        try JSONSerialization.data(withJSONObject: ["actions": [["type": "drive-backup", "data": data]]])
            .write(to: URL(fileURLWithPath: file))
        let started = Date()
        let r = try daemon.cli(["transaction", file, "--json"])
        let wall = Date().timeIntervalSince(started)
        guard r.succeeded, let line = r.stdout.split(separator: "\n").last,
              let event = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let d = event["data"] as? [String: Any], let summary = d["x-summary"] as? [String: Any] else {
            throw BenchError("the backup failed: \(r.stdout)\(r.stderr)\n\(daemon.logTail())")
        }
        let c = summary["converge"] as? [String: Any] ?? [:]
        try? FileManager.default.removeItem(atPath: chain)
        return Result(wall: wall, bytesRead: (summary["bytes_read"] as? NSNumber)?.uint64Value ?? 0,
                      copySeconds: (summary["seconds"] as? NSNumber)?.doubleValue ?? wall,
                      passes: (c["passes"] as? NSNumber)?.intValue ?? 0,
                      finalBytes: (c["final-bytes"] as? NSNumber)?.uint64Value ?? 0,
                      frozen: (c["frozen-seconds"] as? NSNumber)?.doubleValue ?? 0,
                      quiesce: (c["quiesce-seconds"] as? NSNumber)?.doubleValue ?? 0)
    }

    /// fio's write bandwidth in bytes/s from its JSON report.
    static func fioWriteRate(_ path: String) -> Double? {
        guard let data = FileManager.default.contents(atPath: path),
              let start = data.firstIndex(of: UInt8(ascii: "{")),
              let o = try? JSONSerialization.jsonObject(with: data[start...]) as? [String: Any],
              let jobs = o["jobs"] as? [[String: Any]], let w = jobs.first?["write"] as? [String: Any] else { return nil }
        return (w["bw_bytes"] as? NSNumber)?.doubleValue
    }

    /// fio writing 64 KiB random blocks to a 128 MiB file at `rateMiB` MiB/s until stopped.
    private func startLoad(mount: String, rateMiB: Int, report: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Child.executable("fio") ?? "/usr/bin/fio")
        p.arguments = ["--name=load", "--filename=\(mount)/load", "--size=128M", "--rw=randwrite", "--bs=64k",
                       "--direct=1", "--ioengine=psync", "--rate=\(rateMiB)m", "--time_based", "--runtime=3600",
                       "--output-format=json", "--output=\(report)"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let pid = p.processIdentifier
        Janitor.shared.adopt(cleanUp: { kill(pid, SIGTERM) })
        return p
    }
}
