import ArgumentParser
import Backup
import BlockIO
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure copy throughput of a device: read, write, and end-to-end backup, against fio and dd.",
        discussion: """
            Runs, in one go: a sequential O_DIRECT read of DEVICE through ringback's engine; a
            sequential O_DIRECT write of the same amount into a file in --target; a full backup
            of DEVICE into --target; and, where installed, `fio --ioengine=io_uring` and
            `dd iflag=direct` reads of the same range, printing MB/s and same-run ratios.
            The page cache is dropped before each run. Nothing is written to DEVICE.

            Example: ringback bench /dev/sdb --target /var/tmp
            """)

    @Argument(help: "The block device to read.")
    var device: String

    @Option(help: "Directory for the write and backup runs (files are removed afterwards).")
    var target: String = "/var/tmp"

    @Option(help: "Bytes to read (default: the whole device, at most 1G).")
    var size: ByteCount?

    @Flag(help: "Print the results as one JSON object.")
    var json = false

    struct Results: Codable {
        var device: String
        var bytes: UInt64
        var ringbackReadMBs: Double
        var ringbackWriteMBs: Double
        var ringbackBackupMBs: Double
        var fioReadMBs: Double?
        var ddReadMBs: Double?
    }

    func run() throws {
        do { try runBench() } catch { fail("bench of \(device) failed: \(error)") }
    }

    private func runBench() throws {
        let source = try BlockFile(path: device, mode: .read, direct: true)
        let bytes = min(size?.value ?? min(source.size, 1 << 30), source.size) / (1 << 20) * (1 << 20)
        guard bytes > 0 else { throw BackupError("\(device) is smaller than 1 MiB; nothing to measure") }
        let options = CopyOptions()

        // 1. Sequential read through the engine.
        dropCaches()
        let plan = ChunkPlan(deviceSize: bytes, clusterSize: options.clusterSize, chunkSize: options.chunkSize)
        let read = try CopyEngine.run(plan: plan, source: source, target: nil, sink: DiscardSink(), options: options)
        let readMBs = Double(bytes) / 1e6 / read.seconds

        // 2. Sequential write of non-zero data into the target directory.
        let writeMBs = try measureWrite(bytes: bytes)

        // 3. End-to-end backup of the same device into the target directory.
        dropCaches()
        let image = (target as NSString).appendingPathComponent("ringback-bench-\(getpid()).qcow2")
        defer { unlink(image); unlink(image + ".digests") }
        var request = BackupRequest(device: device, target: image)
        request.force = true
        let backup = try FullBackup.run(request)
        let backupMBs = backup.mbPerSecond

        // 4. Peers on the same range.
        let fio = runFio(bytes: bytes)
        let dd = runDd(bytes: bytes)

        let results = Results(device: device, bytes: bytes, ringbackReadMBs: readMBs, ringbackWriteMBs: writeMBs,
                              ringbackBackupMBs: backupMBs, fioReadMBs: fio, ddReadMBs: dd)
        if json { printJSON(results); return }
        func row(_ name: String, _ v: Double?) -> String {
            let label = "  " + name.padding(toLength: 38, withPad: " ", startingAt: 0)
            guard let v else { return label + "       n/a (not installed)" }
            return label + String(format: "%10.1f MB/s", v)
        }
        print("bench of \(device), \(formatBytes(bytes)), target \(target):")
        print(row("ringback read (\(read.engine))", readMBs))
        print(row("ringback write", writeMBs))
        print(row("ringback backup (qcow2, end to end)", backupMBs))
        print(row("fio read (io_uring, 1M, qd32)", fio))
        print(row("dd read (iflag=direct, 1M)", dd))
        if let fio { print(String(format: "  ringback read / fio read   = %.2f", readMBs / fio)) }
        if let dd { print(String(format: "  ringback read / dd read    = %.2f", readMBs / dd)) }
        if let fio { print(String(format: "  ringback backup / fio read = %.2f", backupMBs / fio)) }
        if let dd { print(String(format: "  ringback backup / dd read  = %.2f", backupMBs / dd)) }
    }

    private func measureWrite(bytes: UInt64) throws -> Double {
        let path = (target as NSString).appendingPathComponent("ringback-bench-\(getpid()).write")
        defer { unlink(path) }
        let file = try BlockFile(path: path, mode: .create(truncate: true), direct: true)
        let block = 1 << 20
        let buffer = AlignedBuffer(count: block)
        arc4random_buf(buffer.pointer, block)
        let start = Date()
        var offset: UInt64 = 0
        while offset < bytes {
            try file.write(from: buffer.pointer, count: block, at: offset)
            offset += UInt64(block)
        }
        try file.sync()
        return Double(bytes) / 1e6 / Date().timeIntervalSince(start)
    }

    private func runFio(bytes: UInt64) -> Double? {
        dropCaches()
        guard let out = runTool(["fio", "--name=ringback-bench", "--filename=\(device)", "--rw=read",
                                 "--ioengine=io_uring", "--direct=1", "--bs=1M", "--iodepth=32",
                                 "--size=\(bytes)", "--readonly", "--output-format=json"]),
              let json = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any],
              let jobs = json["jobs"] as? [[String: Any]], let read = jobs.first?["read"] as? [String: Any],
              let bw = read["bw_bytes"] as? NSNumber else { return nil }
        return bw.doubleValue / 1e6
    }

    private func runDd(bytes: UInt64) -> Double? {
        dropCaches()
        let start = Date()
        guard runTool(["dd", "if=\(device)", "of=/dev/null", "iflag=direct", "bs=1M",
                       "count=\(bytes / (1 << 20))", "status=none"]) != nil else { return nil }
        return Double(bytes) / 1e6 / Date().timeIntervalSince(start)
    }

    /// Runs a peer tool; nil when it is not installed or fails.
    private func runTool(_ args: [String]) -> String? {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
    }

    private func dropCaches() {
        sync()
        if let f = FileHandle(forWritingAtPath: "/proc/sys/vm/drop_caches") {
            f.write(Data("3\n".utf8)); try? f.close()
        }
    }
}
