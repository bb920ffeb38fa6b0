import Foundation

/// One of the two source configurations of the benchmark, each a loop
/// device holding the same random data.
struct SourceSetup: Sendable {
    enum Kind: String, CaseIterable, Sendable {
        /// Loop device with direct I/O over a file on disk: the device is
        /// the bottleneck, as with a real disk.
        case disk = "D"
        /// Loop device over a file on tmpfs: a source faster than any copier,
        /// so the copier's own overhead shows.
        case shm = "S"

        var title: String {
            switch self {
            case .disk: "(D) loop --direct-io=on over a file on disk, target on tmpfs"
            case .shm: "(S) loop over a file on tmpfs, target on tmpfs"
            }
        }
    }

    let kind: Kind
    let device: String
    let backingFile: String
    /// Whether the loop driver reports direct I/O on (sysfs `loop/dio`).
    let directIO: Bool

    /// Attaches a loop device for `kind` over the random data in `randomData`
    /// (a file on disk). (S) copies the data into `shmDirectory` first.
    static func attach(_ kind: Kind, randomData: String, shmDirectory: String) throws -> SourceSetup {
        var args = ["losetup", "--find", "--show"]
        let backing: String
        switch kind {
        case .disk:
            backing = randomData
            args.append("--direct-io=on")
        case .shm:
            backing = (shmDirectory as NSString).appendingPathComponent("source-S.img")
            try Child.check(["cp", randomData, backing])
        }
        args.append(backing)
        let device = try Child.check(args).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        Janitor.shared.adopt(loopDevice: device)
        let name = (device as NSString).lastPathComponent
        let dio = (try? String(contentsOfFile: "/sys/block/\(name)/loop/dio", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) == "1"
        if kind == .disk && !dio {
            warn("\(device): the loop driver did not turn on direct I/O; (D) reads go through the page cache")
        }
        return SourceSetup(kind: kind, device: device, backingFile: backing, directIO: dio)
    }

    /// Writes `size` random bytes to `path` and syncs them to disk.
    static func writeRandomData(to path: String, size: UInt64) throws {
        let mib = size / (1 << 20)
        try Child.check(["dd", "if=/dev/urandom", "of=\(path)", "bs=1M", "count=\(mib)",
                         "iflag=fullblock", "conv=fsync", "status=none"])
    }
}
