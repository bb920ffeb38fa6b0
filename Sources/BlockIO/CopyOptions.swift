/// The tunables of one copy (DESIGN §4).
public struct CopyOptions: Equatable, Sendable {
    /// Unit of zero detection, digests and image allocation. Power of two ≥ 512.
    public var clusterSize: Int = 64 << 10
    /// Bytes per read; a multiple of the cluster size.
    public var chunkSize: Int = 1 << 20
    /// Chunks in flight at once.
    public var queueDepth: Int = 32
    /// Bytes per second, 0 for no limit.
    public var speedLimit: UInt64 = 0
    /// Which engine runs the copy.
    public var engine: EngineChoice = .automatic

    public init() {}

    /// Checks the values; the error names the offending option and value.
    public func validate() throws(CopyOptionsError) {
        guard clusterSize >= 512, clusterSize.nonzeroBitCount == 1 else {
            throw .invalid("cluster size \(clusterSize) must be a power of two of at least 512 bytes")
        }
        guard clusterSize <= 2 << 20 else {
            throw .invalid("cluster size \(clusterSize) is larger than the 2 MiB qcow2 allows")
        }
        guard chunkSize >= clusterSize, chunkSize % clusterSize == 0 else {
            throw .invalid("chunk size \(chunkSize) must be a multiple of the cluster size \(clusterSize)")
        }
        guard chunkSize <= 64 << 20 else { throw .invalid("chunk size \(chunkSize) is larger than 64 MiB") }
        guard (1...1024).contains(queueDepth) else {
            throw .invalid("queue depth \(queueDepth) must be between 1 and 1024")
        }
    }
}

/// Which I/O path copies the data.
public enum EngineChoice: String, Sendable, CaseIterable {
    /// io_uring, falling back to pread/pwrite with a warning when it is refused.
    case automatic = "auto"
    /// io_uring only; fail when it is refused.
    case ioUring = "io_uring"
    /// pread/pwrite on the calling thread.
    case synchronous = "sync"
}

/// A copy option out of range.
public enum CopyOptionsError: Error, Equatable, CustomStringConvertible, Sendable {
    case invalid(String)
    public var description: String {
        switch self { case .invalid(let why): "invalid option: \(why)" }
    }
}
