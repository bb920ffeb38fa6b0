/// A Linux device number (dev_t) split into major and minor.
public struct DeviceNumber: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let major: UInt32
    public let minor: UInt32

    public init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    /// Splits a raw dev_t (st_dev, st_rdev) with glibc's encoding
    /// (sys/sysmacros.h: 12 bits of major and 20 of minor, interleaved).
    public init(rawValue dev: UInt64) {
        major = UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000))
        minor = UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & 0xffff_ff00))
    }

    /// Parses "MAJOR:MINOR", the form of sysfs `dev` files and mountinfo.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]) else { return nil }
        self.init(major: major, minor: minor)
    }

    public var description: String { "\(major):\(minor)" }

    public static func < (a: DeviceNumber, b: DeviceNumber) -> Bool {
        (a.major, a.minor) < (b.major, b.minor)
    }
}

/// What a block device is, as far as backups care.
public enum BlockDeviceKind: String, Codable, Sendable, CaseIterable {
    /// A whole disk (sd, vd, nvme, zram, md, ...).
    case disk
    /// A partition of a disk; see `BlockDeviceInfo.partition`.
    case partition
    /// A loop device.
    case loop
    /// A device-mapper device that is not an LVM logical volume.
    case dm
    /// An LVM logical volume (a dm device whose dm UUID starts with "LVM-").
    case lvm
}

/// Where a partition sits on its disk.
public struct PartitionInfo: Codable, Hashable, Sendable {
    /// The partition number (the `partition` sysfs attribute).
    public var number: Int
    /// The offset of its first byte on the parent disk.
    public var start: UInt64
    /// The name of the whole disk holding it (e.g. "sda" for "sda1").
    public var parent: String

    public init(number: Int, start: UInt64, parent: String) {
        self.number = number
        self.start = start
        self.parent = parent
    }
}

/// Everything `ringback devices` shows about one block device, read from sysfs,
/// libblkid and /proc/self/mountinfo at one moment.
public struct BlockDeviceInfo: Codable, Hashable, Sendable {
    /// The kernel name ("sda1", "loop0", "dm-0").
    public var name: String
    /// The device node, /dev/NAME (devtmpfs creates it without udev).
    public var path: String
    public var major: UInt32
    public var minor: UInt32
    /// Size in bytes.
    public var size: UInt64
    public var logicalSectorSize: Int
    public var physicalSectorSize: Int
    public var kind: BlockDeviceKind
    public var readOnly: Bool
    /// Set for partitions only.
    public var partition: PartitionInfo?
    /// The file behind an attached loop device.
    public var loopBackingFile: String?
    /// The device-mapper name (/dev/mapper/NAME) of dm and lvm devices.
    public var dmName: String?
    /// The device-mapper UUID ("LVM-..." for logical volumes).
    public var dmUUID: String?
    /// Filesystem (or other signature) type reported by libblkid, e.g. "ext4".
    public var fsType: String?
    public var fsUUID: String?
    public var fsLabel: String?
    /// Where the device itself is mounted (not its partitions or holders).
    public var mountpoints: [String]
    /// Kernel names of devices built on top of this one (dm, md).
    public var holders: [String]
    /// Kernel names of the devices this one is built on.
    public var slaves: [String]
    /// For LVM devices (kind `lvm`): the logical volume, as lvs reports it
    /// (nil when lvs could not be asked). Filled by `DeviceProbe.devices()`.
    public var logicalVolume: LogicalVolume?
    /// For LVM's internal devices of an LV (its dm UUID's suffix: "real",
    /// "cow", "tpool", "tdata", "tmeta"); nil for the LV's own device.
    public var lvmLayer: String?

    public init(name: String, path: String, major: UInt32, minor: UInt32, size: UInt64,
                logicalSectorSize: Int, physicalSectorSize: Int, kind: BlockDeviceKind,
                readOnly: Bool = false, partition: PartitionInfo? = nil, loopBackingFile: String? = nil,
                dmName: String? = nil, dmUUID: String? = nil, fsType: String? = nil,
                fsUUID: String? = nil, fsLabel: String? = nil, mountpoints: [String] = [],
                holders: [String] = [], slaves: [String] = [], logicalVolume: LogicalVolume? = nil,
                lvmLayer: String? = nil) {
        self.name = name
        self.path = path
        self.major = major
        self.minor = minor
        self.size = size
        self.logicalSectorSize = logicalSectorSize
        self.physicalSectorSize = physicalSectorSize
        self.kind = kind
        self.readOnly = readOnly
        self.partition = partition
        self.loopBackingFile = loopBackingFile
        self.dmName = dmName
        self.dmUUID = dmUUID
        self.fsType = fsType
        self.fsUUID = fsUUID
        self.fsLabel = fsLabel
        self.mountpoints = mountpoints
        self.holders = holders
        self.slaves = slaves
        self.logicalVolume = logicalVolume
        self.lvmLayer = lvmLayer
    }

    /// The device's own dev_t.
    public var deviceNumber: DeviceNumber { DeviceNumber(major: major, minor: minor) }

    /// A loop device with nothing attached (size 0); `ringback devices` hides
    /// these unless asked for all.
    public var isUnattachedLoop: Bool { kind == .loop && size == 0 }

    enum CodingKeys: String, CodingKey {
        case name, path, major, minor, size, logicalSectorSize, physicalSectorSize, kind, readOnly
        case partition, loopBackingFile, dmName, dmUUID, fsType, fsUUID, fsLabel
        case mountpoints, holders, slaves, logicalVolume, lvmLayer
    }

    /// Encodes every key, absent values as null, so that consumers of
    /// `ringback devices --json` see the same key set on every device.
    /// (Decoding is synthesized and accepts missing keys as nil.)
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(path, forKey: .path)
        try c.encode(major, forKey: .major)
        try c.encode(minor, forKey: .minor)
        try c.encode(size, forKey: .size)
        try c.encode(logicalSectorSize, forKey: .logicalSectorSize)
        try c.encode(physicalSectorSize, forKey: .physicalSectorSize)
        try c.encode(kind, forKey: .kind)
        try c.encode(readOnly, forKey: .readOnly)
        try c.encode(partition, forKey: .partition)
        try c.encode(loopBackingFile, forKey: .loopBackingFile)
        try c.encode(dmName, forKey: .dmName)
        try c.encode(dmUUID, forKey: .dmUUID)
        try c.encode(fsType, forKey: .fsType)
        try c.encode(fsUUID, forKey: .fsUUID)
        try c.encode(fsLabel, forKey: .fsLabel)
        try c.encode(mountpoints, forKey: .mountpoints)
        try c.encode(holders, forKey: .holders)
        try c.encode(slaves, forKey: .slaves)
        try c.encode(logicalVolume, forKey: .logicalVolume)
        try c.encode(lvmLayer, forKey: .lvmLayer)
    }
}
