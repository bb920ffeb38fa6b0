/// A failure to probe a block device that is not an errno (those are
/// `SystemError`s): the path names something that is not a block device, the
/// kernel does not list it, a kernel file could not be parsed, or no mount
/// holds a path.
public struct DeviceError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Which failure; compared with `==` against the static members.
    public struct Code: Hashable, Sendable {
        fileprivate enum Value: Hashable, Sendable {
            case notBlockDevice, notInSysfs, unparsable, noMount
        }
        fileprivate let value: Value

        /// The path exists but is a regular file, directory, character device...
        public static let notBlockDevice = Code(value: .notBlockDevice)
        /// The path is a block device node whose major:minor sysfs does not list
        /// (a stale node in a static /dev, or sysfs not mounted).
        public static let notInSysfs = Code(value: .notInSysfs)
        /// A sysfs attribute or a mountinfo line did not have the form the
        /// kernel documents (Documentation/ABI, proc(5)).
        public static let unparsable = Code(value: .unparsable)
        /// No mount in the mount table contains the path (an empty or foreign
        /// mount table).
        public static let noMount = Code(value: .noMount)
    }

    /// Which failure.
    public let code: Code
    /// The path (device, file or mountinfo) the failure is about.
    public let path: String
    /// Why, phrased to follow the path, e.g. "it is a directory, not a block device".
    public let reason: String

    private let operation: String

    init(_ code: Code, operation: String, path: String, reason: String) {
        self.code = code
        self.operation = operation
        self.path = path
        self.reason = reason
    }

    public var description: String { "cannot \(operation) \(path): \(reason)" }

    static func notBlockDevice(_ path: String, fileType: String) -> DeviceError {
        DeviceError(.notBlockDevice, operation: "probe", path: path,
                    reason: "it is \(fileType), not a block device")
    }

    static func notInSysfs(_ path: String, _ dev: DeviceNumber, sysfs: String) -> DeviceError {
        DeviceError(.notInSysfs, operation: "probe", path: path,
                    reason: "block device \(dev) is not listed in \(sysfs)/class/block")
    }

    static func unparsable(_ path: String, _ why: String) -> DeviceError {
        DeviceError(.unparsable, operation: "parse", path: path, reason: why)
    }

    static func noMount(_ path: String, table: String) -> DeviceError {
        DeviceError(.noMount, operation: "find the filesystem holding", path: path,
                    reason: "no mount point in \(table) contains it")
    }
}
