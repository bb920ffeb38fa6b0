/// A failure of write tracking that is not an errno (those are `SystemError`s):
/// tracefs is missing, a kernel file has a layout this reader does not know,
/// a device is not on the tracked disk, a barrier timed out, or another
/// tracker already reads the instance.
public struct TrackingError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Which failure; compared with `==` against the static members.
    public struct Code: Hashable, Sendable {
        fileprivate enum Value: Hashable, Sendable {
            case tracefsUnavailable, unsupportedFormat, corruptPage, notOnDisk, barrierTimeout, busy, stopped
        }
        fileprivate let value: Value

        /// The kernel has no tracefs (or it cannot be mounted).
        public static let tracefsUnavailable = Code(value: .tracefsUnavailable)
        /// A `format`, `header_page` or `header_event` file does not describe
        /// what this reader can decode.
        public static let unsupportedFormat = Code(value: .unsupportedFormat)
        /// A page read from `trace_pipe_raw` contradicts its own header.
        public static let corruptPage = Code(value: .corruptPage)
        /// The device to track is neither the disk nor one of its partitions.
        public static let notOnDisk = Code(value: .notOnDisk)
        /// The barrier's marker did not come back in time.
        public static let barrierTimeout = Code(value: .barrierTimeout)
        /// Another tracker (another process) is reading the instance.
        public static let busy = Code(value: .busy)
        /// The tracker was stopped, or its reader failed.
        public static let stopped = Code(value: .stopped)
    }

    /// Which failure.
    public let code: Code
    /// The file, instance directory or device the failure is about.
    public let path: String
    /// Why, phrased to follow the path.
    public let reason: String

    private let operation: String

    init(_ code: Code, operation: String, path: String, reason: String) {
        self.code = code
        self.operation = operation
        self.path = path
        self.reason = reason
    }

    public var description: String { "cannot \(operation) \(path): \(reason)" }

    static func tracefsUnavailable(_ path: String, _ why: String) -> TrackingError {
        TrackingError(.tracefsUnavailable, operation: "use tracefs at", path: path, reason: why)
    }

    static func unsupportedFormat(_ path: String, _ why: String) -> TrackingError {
        TrackingError(.unsupportedFormat, operation: "parse", path: path, reason: why)
    }

    static func corruptPage(_ path: String, _ why: String) -> TrackingError {
        TrackingError(.corruptPage, operation: "decode a ring-buffer page of", path: path, reason: why)
    }

    static func notOnDisk(_ path: String, disk: String) -> TrackingError {
        TrackingError(.notOnDisk, operation: "track", path: path,
                      reason: "it is neither \(disk) nor one of its partitions")
    }

    static func barrierTimeout(_ instance: String, _ why: String) -> TrackingError {
        TrackingError(.barrierTimeout, operation: "complete a barrier on", path: instance, reason: why)
    }

    static func busy(_ instance: String) -> TrackingError {
        TrackingError(.busy, operation: "attach to", path: instance,
                      reason: "another tracker is reading this instance")
    }

    static func stopped(_ instance: String, _ why: String) -> TrackingError {
        TrackingError(.stopped, operation: "use the tracker of", path: instance, reason: why)
    }
}
