/// One `[plan.NAME]` table: which devices are backed up where, when, and how
/// many restore points are kept.
public struct BackupPlan: Equatable, Sendable {
    /// A device of a plan as written, the path the daemon opens, and the name
    /// of its folder in the repository.
    public struct Device: Equatable, Sendable {
        /// As written in the configuration (`/dev/sdb`, `vg0/root`).
        public let name: String
        /// The block device path: `vg0/root` is `/dev/vg0/root`.
        public let path: String
        /// The device's folder under the repository; see `BackupPlan.deviceID(for:)`.
        public let id: String
    }

    public enum Format: String, Equatable, Sendable, CaseIterable {
        /// Chains: a full backup and qcow2 overlays of the changes.
        case qcow2
        /// Sparse raw images: every backup is a full one, in a chain of its own.
        case raw
    }

    public enum Compression: String, Equatable, Sendable, CaseIterable {
        case none, zstd
    }

    /// The point in time of the backup (`x-consistency` of `drive-backup`).
    public enum Consistency: String, Equatable, Sendable, CaseIterable {
        case none, frozen, converge
    }

    public let name: String
    public let devices: [Device]
    /// An absolute path, without a trailing slash.
    public let repository: String
    public let schedule: Schedule
    /// The persistent dirty bitmap the plan keeps on each device (default `plan-NAME`).
    public let bitmap: String
    public let format: Format
    public let compression: Compression
    public let consistency: Consistency
    /// Bytes per second per device; 0 is no limit.
    public let speedLimit: UInt64
    /// Incrementals kept per chain; older ones are merged into the full. nil: no limit.
    public let keepIncrementals: Int?
    /// A chain older than this gets a new full backup and a new chain. nil: never.
    public let newChainEvery: TimeSpan?
    /// Chains kept per device; older ones are deleted. nil: no limit.
    public let keepChains: Int?
    /// LVs are read from an LVM snapshot made at the run's point in time
    /// (`x-lvm-snapshot`; thin LVs keep it as the next run's thin-delta base).
    public let lvmSnapshot: Bool
    /// The line of the plan's table header.
    public let line: Int

    public init(name: String, devices: [Device], repository: String, schedule: Schedule, bitmap: String? = nil,
                format: Format = .qcow2, compression: Compression = .none, consistency: Consistency = .none,
                speedLimit: UInt64 = 0, keepIncrementals: Int? = nil, newChainEvery: TimeSpan? = nil,
                keepChains: Int? = nil, lvmSnapshot: Bool = false, line: Int = 0) {
        self.name = name
        self.devices = devices
        self.repository = repository
        self.schedule = schedule
        self.bitmap = bitmap ?? "plan-\(name)"
        self.format = format
        self.compression = compression
        self.consistency = consistency
        self.speedLimit = speedLimit
        self.keepIncrementals = keepIncrementals
        self.newChainEvery = newChainEvery
        self.keepChains = keepChains
        self.lvmSnapshot = lvmSnapshot
        self.line = line
    }

    /// The device folder of `<repository>/<device-id>/`: the device's name as
    /// written in the configuration, made into one readable path segment, so it
    /// stays the same across reboots (unlike `/dev/dm-3` or `/dev/loop5`, which
    /// the kernel may number differently) and is easy to find by hand.
    ///
    /// - a leading `/dev/` is dropped, and so is `mapper/` or `disk/by-*/`:
    ///   `/dev/sdb` → `sdb`, `/dev/mapper/vg0-root` → `vg0-root`,
    ///   `/dev/disk/by-id/ata-X` → `ata-X`;
    /// - the remaining `/` become `-`: `vg0/root` and `/dev/vg0/root` → `vg0-root`;
    /// - characters other than letters, digits, `.`, `_`, `-`, `+`, `@`, `:` become `_`.
    public static func deviceID(for name: String) -> String {
        var s = Substring(name)
        if s.hasPrefix("/dev/") { s = s.dropFirst(5) }
        if s.hasPrefix("mapper/") {
            s = s.dropFirst(7)
        } else if s.hasPrefix("disk/by-"), let slash = s.dropFirst(8).firstIndex(of: "/") {
            s = s[s.index(after: slash)...]
        }
        while s.hasPrefix("/") { s = s.dropFirst() }
        return String(s.unicodeScalars.map { c -> Character in
            if c == "/" { return "-" }
            let allowed = (c.value < 0x80 && (Character(c).isLetter || Character(c).isNumber)) || "._-+@:".unicodeScalars.contains(c)
            return allowed ? Character(c) : "_"
        })
    }

    /// The block device path of a device as written: `VG/LV` is `/dev/VG/LV`.
    public static func devicePath(for name: String) -> String {
        name.hasPrefix("/") ? name : "/dev/" + name
    }
}
