import BlockDevices
import BlockIO

/// Names one `track(device:)` of a tracker; stable until `untrack`.
public struct TrackedDeviceID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public var description: String { "tracked-\(rawValue)" }
}

/// A device whose writes a tracker reports: the whole disk itself or one of
/// its partitions, with where it sits on the disk.
public struct TrackedDevice: Hashable, Sendable {
    public let id: TrackedDeviceID
    /// The path it was tracked by.
    public let path: String
    /// The kernel name ("loop5", "sda2").
    public let name: String
    /// Its own dev_t.
    public let device: DeviceNumber
    /// The offset of its first byte on the disk: 0 for the disk, the
    /// partition start (from sysfs) for a partition.
    public let diskOffset: UInt64
    /// Its size in bytes when it was tracked.
    public let size: UInt64
    /// True for the disk itself: its ranges are passed on unclipped, so a disk
    /// that grows while tracked loses nothing.
    public let isWholeDisk: Bool

    init(id: TrackedDeviceID, path: String, info: BlockDeviceInfo, diskOffset: UInt64, isWholeDisk: Bool) {
        self.id = id
        self.path = path
        self.name = info.name
        self.device = info.deviceNumber
        self.diskOffset = diskOffset
        self.size = info.size
        self.isWholeDisk = isWholeDisk
    }

    /// The part of a disk range that lies on this device, in bytes from the
    /// device's own start; nil when they do not meet.
    public func deviceExtent(ofDiskBytes range: Extent) -> Extent? {
        guard range.length > 0 else { return nil }
        if isWholeDisk { return range }
        let end = diskOffset + size
        let start = max(range.offset, diskOffset), stop = min(range.end, end)
        guard start < stop else { return nil }
        return Extent(offset: start - diskOffset, length: stop - start)
    }
}
