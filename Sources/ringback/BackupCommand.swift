import ArgumentParser
import Backup
import BlockDevices
import BlockIO
import ControlProtocol
import Foundation
import Images

extension ImageFormatChoice: ExpressibleByArgument {}
extension EngineChoice: ExpressibleByArgument {}

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Take a full backup of a block device into a qcow2 or raw image.",
        discussion: """
            Reads DEVICE with O_DIRECT through io_uring and writes the image at PATH, plus a
            per-cluster digest file PATH.digests used by `ringback verify`. All-zero clusters
            are not written. The image appears under its name only once it is complete and synced.

            With --sync or --bitmap the backup runs in ringbackd, which owns the dirty bitmaps:
            --to names the chain's folder; a full backup starts the chain and an incremental
            adds a qcow2 overlay on its newest image (QEMU's validation rules apply).

            Examples: ringback backup /dev/sdb --to /backup/sdb.qcow2
                      ringback backup /dev/sdb --sync full --bitmap nightly --bitmap-mode on-success --to /backup/sdb
                      ringback backup /dev/sdb --sync incremental --bitmap nightly --to /backup/sdb
                      ringback backup /dev/sdb --sync incremental --bitmap nightly --rescan --to /backup/sdb
            """)

    @Argument(help: "The block device (or file) to back up.")
    var device: String

    @Option(name: .long, help: "Path of the image to write.")
    var to: String

    @Option(help: "Image format: qcow2 or raw.")
    var format: ImageFormatChoice = .qcow2

    @Option(help: "Cluster size: a power of two from 512 bytes to 2M (e.g. 64K).")
    var clusterSize: ByteCount = ByteCount(argument: "64K")!

    @Option(help: "Bytes per read, a multiple of the cluster size (e.g. 1M).")
    var chunkSize: ByteCount = ByteCount(argument: "1M")!

    @Option(help: "Chunks in flight at once.")
    var queueDepth: Int = 32

    @Option(help: "Speed limit in bytes per second (e.g. 100M); 0 for none.")
    var speed: ByteCount = ByteCount(argument: "0")!

    @Option(help: "Compress qcow2 clusters: zstd.")
    var compress: String?

    @Option(help: "I/O engine: auto (io_uring, else pread/pwrite), io_uring, or sync.")
    var engine: EngineChoice = .automatic

    @Flag(help: "Replace an existing image file.")
    var force = false

    @Option(help: "Through ringbackd: full, incremental or bitmap.")
    var sync: String?

    @Option(help: "Through ringbackd: the dirty bitmap that defines what changed.")
    var bitmap: String?

    @Option(help: "What happens to the bitmap: on-success, always or never.")
    var bitmapMode: String?

    @Flag(help: "Re-read the whole device and compare it with the previous backup's digests (re-arms an inconsistent bitmap).")
    var rescan = false

    @Option(help: ArgumentHelp("Through ringbackd: the point in time. frozen: the filesystems stay frozen for the copy; "
                               + "converge: copy live, then a short final freeze; none: a live, crash-inconsistent copy.",
                               valueName: "mode"))
    var consistency: String?

    @Flag(help: "Through ringbackd: read an LVM snapshot of the LV made at the backup's point in time (x-lvm-snapshot).")
    var lvmSnapshot = false

    @Option(help: "With --lvm-snapshot on a classic LV: copy-on-write space (e.g. 2G; default a fifth of the LV).")
    var snapshotSize: ByteCount?

    @Flag(help: "With --lvm-snapshot on a thin LV: keep the snapshot as the base of the next thin-delta incremental.")
    var keepSnapshot = false

    @Option(help: "ringbackd's control socket (default: $RINGBACK_SOCKET or /run/ringback/qmp.sock).")
    var socket: String = QMP.socketPath

    @Flag(help: "Print one JSON summary object instead of text.")
    var json = false

    func run() throws {
        if sync != nil || bitmap != nil || rescan || consistency != nil || lvmSnapshot {
            runInDaemon()
            return
        }
        // An LV's name (VG/LV, /dev/VG/LV, /dev/mapper/VG-LV) reads its dm node.
        let node: String
        do {
            node = try LVM().devicePath(for: device)
        } catch {
            fail("backup of \(device) failed: \(error)")
        }
        var request = BackupRequest(device: node, target: to)
        request.format = format
        request.force = force
        request.options.clusterSize = Int(clusterSize.value)
        request.options.chunkSize = Int(chunkSize.value)
        request.options.queueDepth = queueDepth
        request.options.speedLimit = speed.value
        request.options.engine = engine
        if let compress {
            guard compress == "zstd" else { fail("unknown compression '\(compress)': only zstd is supported") }
            request.compression = .zstd
        }
        let control = CopyControl(speedLimit: speed.value)
        let bar = ProgressBar(control: control, label: "backup", enabled: !json && isatty(2) != 0)
        bar.start()
        let summary: BackupSummary
        do {
            summary = try FullBackup.run(request, control: control, warn: { warn($0) })
        } catch {
            bar.stop()
            fail("backup of \(device) failed: \(error)")
        }
        bar.stop()
        if json {
            printJSON(summary)
        } else {
            print("""
                backup of \(summary.device) complete: \(summary.image) (\(summary.format), \(formatBytes(summary.size)))
                  read \(formatBytes(summary.bytesRead)), wrote \(formatBytes(summary.bytesWritten)), \
                skipped \(formatBytes(summary.zeroBytes)) of zeros
                  \(String(format: "%.2f", summary.seconds)) s, \(String(format: "%.1f", summary.mbPerSecond)) MB/s via \(summary.engine)
                  digests: \(summary.digests ?? "none (raw copy onto a device)")
                """)
        }
    }
}

extension BackupCommand {
    /// A backup with a bitmap, run by ringbackd.
    func runInDaemon() {
        // The daemon has its own working directory: send absolute paths.
        var args: [String: JSONValue] = ["device": .string(deviceArgument(device)), "target": .string(absolute(to)),
                                         "sync": .string(sync ?? "full"), "format": .string(format.rawValue)]
        if let bitmap { args["bitmap"] = .string(bitmap) }
        if let bitmapMode { args["bitmap-mode"] = .string(bitmapMode) }
        if rescan { args["x-rescan"] = .bool(true) }
        if let consistency {
            args["x-consistency"] = .string(consistency)
            // From the command line a converging backup completes by itself.
            if consistency == "converge" { args["auto-complete"] = .bool(true) }
        }
        if speed.value > 0 { args["speed"] = .int(Int64(speed.value)) }
        if let compress {
            guard compress == "zstd" else { fail("unknown compression '\(compress)': only zstd is supported") }
            args["compress"] = .bool(true)
        }
        // The job is followed by its events; its id names this CLI run.
        let id = "cli-\(getpid())-\(Int(Date().timeIntervalSince1970))"
        args["job-id"] = .string(id)
        let client: QMPClient
        do {
            client = try QMPClient(path: socket)
            if lvmSnapshot {
                var snapshot: [String: JSONValue] = ["device": args["device"]!]
                if let snapshotSize { snapshot["size"] = .int(Int64(snapshotSize.value)) }
                if keepSnapshot { snapshot["x-keep"] = .bool(true) }
                try client.execute("transaction", ["actions": .array([
                    .object(["type": .string("x-lvm-snapshot"), "data": .object(snapshot)]),
                    .object(["type": .string("drive-backup"), "data": .object(args)]),
                ])])
            } else {
                try client.execute("drive-backup", args)
            }
        } catch {
            fail("\(error)")
        }
        let outcome = waitForJobs(client, [id], json: true, quiet: true)[id] ?? .null
        let data = outcome["data"] ?? .null
        if outcome["event"]?.stringValue == "BLOCK_JOB_CANCELLED" { fail("backup of \(device) was cancelled") }
        if let error = data["error"]?.stringValue { fail("backup of \(device) failed: \(error)") }
        let reply = data["x-summary"] ?? .null
        if json { print(reply); return }
        let summary = reply["backup"] ?? reply
        let image = summary["image"]?.stringValue ?? "?"
        let read = UInt64(summary["bytes_read"]?.intValue ?? 0), written = UInt64(summary["bytes_written"]?.intValue ?? 0)
        print("\(sync ?? "full") backup of \(device) complete: \(image)")
        if let backing = reply["backing_file"]?.stringValue { print("  on top of \(backing) (\(reply["mode"]?.stringValue ?? ""))") }
        print("  read \(formatBytes(read)), wrote \(formatBytes(written))")
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Write an image back to a block device or a file.",
        discussion: """
            Checks the image's tables, and its content against IMAGE.digests when present, before
            writing anything. Refuses a mounted device, a device smaller than the image, and an
            existing file unless --force.

            Example: ringback restore /backup/sdb.qcow2 --to /dev/sdc
            """)

    @Argument(help: "The image to restore (qcow2 or raw).")
    var image: String

    @Option(name: .long, help: "The device or file to write.")
    var to: String

    @Flag(help: "Overwrite an existing file target.")
    var force = false

    @Flag(help: "Skip checking the image against its digest file first.")
    var noVerify = false

    @Flag(help: "Print one JSON summary object.")
    var json = false

    func run() throws {
        let control = CopyControl()
        let bar = ProgressBar(control: control, label: "restore", enabled: !json && isatty(2) != 0)
        bar.start()
        let summary: RestoreSummary
        do {
            summary = try Restore.run(image: image, to: to, force: force, verifyFirst: !noVerify, progress: control)
        } catch {
            bar.stop()
            fail("restore of \(image) failed: \(error)")
        }
        bar.stop()
        if json { printJSON(summary); return }
        print("restored \(image) to \(to): \(formatBytes(summary.size)), wrote \(formatBytes(summary.bytesWritten)) "
              + "in \(String(format: "%.2f", summary.seconds)) s"
              + (summary.verifiedFirst ? " (image checked against its digests first)" : ""))
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check an image against its digest file, or bit for bit against a device.",
        discussion: """
            Exit status: 0 the image is good; 1 it differs (the clusters are named); 2 it could
            not be checked (unreadable, corrupt tables, missing digest file).

            Examples: ringback verify /backup/sdb.qcow2
                      ringback verify /backup/sdb.qcow2 --against /dev/sdb
            """)

    @Argument(help: "The image to check.")
    var image: String

    @Option(help: "Compare with this device or file instead of the digest file.")
    var against: String?

    @Flag(help: "Print one JSON report object.")
    var json = false

    func run() throws {
        let control = CopyControl()
        let bar = ProgressBar(control: control, label: "verify", enabled: !json && isatty(2) != 0)
        bar.start()
        let report: VerifyReport
        do {
            if let against {
                report = try Verify.againstDevice(image: image, device: against, progress: control)
            } else {
                report = try Verify.againstDigests(image: image, progress: control)
            }
        } catch {
            bar.stop()
            fail("cannot verify \(image): \(error)", code: 2)
        }
        bar.stop()
        if json { printJSON(report) } else {
            let what = against.map { "against \($0)" } ?? "against its digests"
            print("\(image) \(report.ok ? "OK" : "DIFFERS") \(what): \(report.summary)")
        }
        if !report.ok { throw ExitCode(1) }
    }
}
