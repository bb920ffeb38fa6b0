import BlockDevices
import Foundation

/// Which filesystems a set of devices carries and in which order to freeze
/// them (DESIGN §11): every filesystem mounted from a device, one of its
/// partitions, or a device stacked on it; each filesystem once (a bind mount
/// shows the same superblock again, and a second FIFREEZE of it fails with
/// EBUSY); a mount nested inside another is frozen first and thawed last, so
/// no frozen parent ever blocks the path to a child still being frozen.
public struct FreezePlan: Sendable, Equatable {
    /// Mount points in freeze order; thaw in reverse.
    public let mountPoints: [String]

    public init(mountPoints: [String]) { self.mountPoints = mountPoints }

    /// The plan for `devices` against a mount table.
    public static func plan(devices: [String], table: MountTable) throws -> FreezePlan {
        var seen = Set<DeviceNumber>()
        var mounts: [MountEntry] = []
        for device in devices {
            for m in try table.filesystemsMounted(from: device) where !seen.contains(m.device) {
                seen.insert(m.device)
                mounts.append(m)
            }
        }
        return FreezePlan(mountPoints: order(mounts.map(\.mountPoint)))
    }

    /// Deepest first; among equals, the order given.
    static func order(_ mountPoints: [String]) -> [String] {
        func depth(_ p: String) -> Int { p.split(separator: "/").count }
        return mountPoints.enumerated().sorted { a, b in
            depth(a.element) != depth(b.element) ? depth(a.element) > depth(b.element) : a.offset < b.offset
        }.map(\.element)
    }
}
