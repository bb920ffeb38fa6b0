import Foundation

/// The commands measured on each source, each reading the whole device.
enum Tool: String, CaseIterable, Sendable {
    case ringbackQcow2 = "ringback_qcow2"
    case ringbackRaw = "ringback_raw"
    case fio
    case dd
    case qemuImg = "qemu_img"

    var label: String {
        switch self {
        case .ringbackQcow2: "ringback backup (qcow2)"
        case .ringbackRaw: "ringback backup --format raw"
        case .fio: "fio read io_uring QD32 1M"
        case .dd: "dd iflag=direct bs=1M"
        case .qemuImg: "qemu-img convert -m 16 -W"
        }
    }

    var isRingback: Bool { self == .ringbackQcow2 || self == .ringbackRaw }

    /// The program that must be installed for this tool (ringback's own path
    /// is checked separately).
    var program: String? {
        switch self {
        case .ringbackQcow2, .ringbackRaw: nil
        case .fio: "fio"
        case .dd: "dd"
        case .qemuImg: "qemu-img"
        }
    }
}

/// One timed run of one tool.
struct Measurement: Sendable {
    /// The rate the tool reports itself (ringback's JSON `mb_per_s`, fio's
    /// `bw_bytes`), or the wall-clock rate for tools that report none.
    var reportedMBps: Double
    /// Device size over the wall clock from launch to exit of the process.
    var wallMBps: Double
}

/// Runs the tools against a device, writing into `outputDirectory`.
struct ToolRunner: Sendable {
    let ringback: String
    let size: UInt64
    let outputDirectory: String

    private var qcow2Output: String { (outputDirectory as NSString).appendingPathComponent("x.qcow2") }
    private var rawOutput: String { (outputDirectory as NSString).appendingPathComponent("x.raw") }

    /// The exact command line of `tool` on `device`.
    func command(_ tool: Tool, device: String) -> [String] {
        switch tool {
        case .ringbackQcow2:
            [ringback, "backup", device, "--to", qcow2Output, "--json"]
        case .ringbackRaw:
            [ringback, "backup", device, "--to", rawOutput, "--format", "raw", "--json"]
        case .fio:
            ["fio", "--name=r", "--filename=\(device)", "--readonly", "--rw=read", "--ioengine=io_uring",
             "--direct=1", "--bs=1M", "--iodepth=32", "--size=\(size)", "--output-format=json"]
        case .dd:
            ["dd", "if=\(device)", "of=\(rawOutput)", "iflag=direct", "bs=1M"]
        case .qemuImg:
            ["qemu-img", "convert", "-t", "none", "-T", "none", "-m", "16", "-W",
             "-f", "raw", "-O", "qcow2", device, qcow2Output]
        }
    }

    /// Runs the tool's program once with `--version`, so that after the page
    /// cache was dropped its executable and libraries are read back before the
    /// timed run. Every tool gets the same treatment: the runs measure copying,
    /// not loading a program from a cold disk (which penalises large binaries
    /// such as ringback's statically linked Swift runtime over dd).
    func warmUp(_ tool: Tool, device: String) {
        _ = try? Child.run([command(tool, device: device)[0], "--version"])
    }

    /// Removes every output (and ringback's digest files) so that no run
    /// writes over, or is helped by, the previous one.
    func removeOutputs() {
        for path in [qcow2Output, rawOutput] {
            for file in [path, path + ".digests"] { try? FileManager.default.removeItem(atPath: file) }
        }
    }

    /// Runs `tool` once on `device` and returns its rates.
    func measure(_ tool: Tool, device: String) throws -> Measurement {
        let args = command(tool, device: device)
        let result = try Child.check(args)
        let wall = Double(size) / 1e6 / result.seconds
        switch tool {
        case .ringbackQcow2, .ringbackRaw:
            let json = try jsonObject(result.stdout, from: args)
            if let bytes = json["bytes_read"] as? NSNumber, bytes.uint64Value != size {
                throw ChildFailure(command: args, reason: "read \(bytes) bytes of a \(size)-byte device")
            }
            if let rate = json["mb_per_s"] as? NSNumber {
                return Measurement(reportedMBps: rate.doubleValue, wallMBps: wall)
            }
            if let bytes = json["bytes_read"] as? NSNumber, let seconds = json["seconds"] as? NSNumber,
               seconds.doubleValue > 0 {
                return Measurement(reportedMBps: bytes.doubleValue / 1e6 / seconds.doubleValue, wallMBps: wall)
            }
            throw ChildFailure(command: args, reason: "printed no mb_per_s: \(result.stdout)")
        case .fio:
            let json = try jsonObject(result.stdout, from: args)
            guard let jobs = json["jobs"] as? [[String: Any]], let read = jobs.first?["read"] as? [String: Any],
                  let bandwidth = read["bw_bytes"] as? NSNumber, bandwidth.doubleValue > 0
            else { throw ChildFailure(command: args, reason: "printed no jobs[0].read.bw_bytes") }
            return Measurement(reportedMBps: bandwidth.doubleValue / 1e6, wallMBps: wall)
        case .dd, .qemuImg:
            return Measurement(reportedMBps: wall, wallMBps: wall)
        }
    }

    /// The JSON object in a tool's stdout; fio may print notes before it.
    private func jsonObject(_ text: String, from args: [String]) throws -> [String: Any] {
        guard let open = text.firstIndex(of: "{"), let close = text.lastIndex(of: "}"),
              let object = try? JSONSerialization.jsonObject(with: Data(text[open...close].utf8)),
              let dictionary = object as? [String: Any]
        else { throw ChildFailure(command: args, reason: "did not print a JSON object: \(text.prefix(200))") }
        return dictionary
    }
}

/// Empties the page cache, dentries and inodes so that no run reads what the
/// previous one left in memory. False when the kernel refused (a container
/// with a read-only /proc/sys).
func dropCaches() -> Bool {
    sync()
    guard let file = fopen("/proc/sys/vm/drop_caches", "w") else { return false }
    let written = fputs("3\n", file) >= 0
    return fclose(file) == 0 && written
}
