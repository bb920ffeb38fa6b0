/// A failure to resolve an LVM name: the tools are missing, the VG or LV does
/// not exist, the LV is not active, or lvs failed or printed what it does not
/// document.
public struct LVMError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Which failure; compared with `==` against the static members.
    public struct Code: Hashable, Sendable {
        fileprivate enum Value: Hashable, Sendable {
            case toolsMissing, noSuchVolumeGroup, noSuchVolume, inactive, noDeviceNode, commandFailed, unparsable
        }
        fileprivate let value: Value

        /// lvs is not installed (the lvm2 package).
        public static let toolsMissing = Code(value: .toolsMissing)
        /// The volume group does not exist.
        public static let noSuchVolumeGroup = Code(value: .noSuchVolumeGroup)
        /// The volume group has no such logical volume.
        public static let noSuchVolume = Code(value: .noSuchVolume)
        /// The LV exists but is not active: it has no device to read.
        public static let inactive = Code(value: .inactive)
        /// The LV is active but neither its /dev/mapper node nor /dev/dm-N is there.
        public static let noDeviceNode = Code(value: .noDeviceNode)
        /// lvs failed for another reason (its message is in the description).
        public static let commandFailed = Code(value: .commandFailed)
        /// lvs printed something that is not the report it documents.
        public static let unparsable = Code(value: .unparsable)
    }

    /// Which failure.
    public let code: Code
    /// The name the failure is about ("vg0/root", "/dev/mapper/vg0-root").
    public let name: String
    /// Why, phrased to follow the name.
    public let reason: String

    init(_ code: Code, name: String, reason: String) {
        self.code = code
        self.name = name
        self.reason = reason
    }

    public var description: String {
        name.isEmpty ? "cannot read the LVM report: \(reason)" : "cannot use logical volume \(name): \(reason)"
    }

    static func unparsable(_ reason: String) -> LVMError {
        LVMError(.unparsable, name: "", reason: reason)
    }
}
