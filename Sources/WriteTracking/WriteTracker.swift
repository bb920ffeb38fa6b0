import BlockDevices
import BlockIO
import Synchronization

/// Changed-block tracking of one whole disk without a kernel module (DESIGN
/// §7): a private tracefs instance records every block completion of the
/// disk, a reader thread decodes the binary per-CPU pages and reports each
/// completed write, discard and write-zeroes to the sink as a byte range of
/// every tracked device it touches (the disk itself and/or its partitions).
///
/// Guarantees: after `barrier(timeout:)` returns, the sink has been called
/// for every such completion that finished before the barrier began, or the
/// result says `lostEvents`. Completions after the barrier may be reported
/// early; nothing is reported on queueing, only on completion.
///
/// The sink runs on the reader thread, one call at a time; it must not call
/// `track`, `untrack` or `trackedDevices` (they wait for the reader's batch to
/// finish).
public final class WriteTracker: @unchecked Sendable {
    /// Receives each changed range: the device and its device-relative bytes.
    public typealias Sink = @Sendable (TrackedDevice, Extent) -> Void

    /// The whole disk.
    public let disk: BlockDeviceInfo
    /// The tracefs instance directory, `/sys/kernel/tracing/instances/ringback-<disk>`.
    public var instancePath: String { instance.path }
    /// False when an instance left by an earlier tracker (a restarted daemon)
    /// was re-attached, with the events it buffered meanwhile.
    public var createdInstance: Bool { instance.created }

    private let instance: TraceInstance
    private let reader: TraceReader
    private let state = Mutex(State())

    private struct State {
        var nextID = 1
        var stopped = false
    }

    /// Default ring-buffer size per CPU, in KiB: about 70,000 completions per
    /// CPU, a few seconds of the heaviest 4 KiB random-write load.
    public static let defaultBufferKiB = 4096

    /// Opens (or re-attaches to) the instance of the disk at `path`; a
    /// partition's path means its disk. The kernel records from this moment;
    /// the reader starts with `start()` or the first barrier, so that every
    /// device can be tracked before events buffered by an earlier tracker are
    /// handed out. Mounts tracefs when it is not mounted.
    ///
    /// `lossBaseline` is nil for a fresh start. A tracker that continues an
    /// earlier one (a restarted daemon) passes the `lossCount` of its last
    /// barrier: the first barrier then reports `lostEvents` when the loss
    /// counters grew beyond it (events dropped while no tracker ran), or when
    /// the instance was gone and had to be created anew (nothing was recorded
    /// meanwhile).
    public init(disk path: String, bufferKiB: Int = WriteTracker.defaultBufferKiB, lossBaseline: UInt64? = nil,
                sink: @escaping Sink) throws {
        let probe = DeviceProbe()
        var info = try probe.device(at: path)
        if let partition = info.partition { info = try probe.device(named: partition.parent) }
        disk = info
        instance = try TraceInstance(disk: info.name, device: info.deviceNumber, bufferKiB: bufferKiB)
        do {
            reader = try TraceReader(instance: instance, lossBaseline: lossBaseline, sink: sink)
        } catch {
            // Leave an instance we attached to for its owner; remove one we made.
            if instance.created { try? instance.remove() } else { instance.close() }
            throw error
        }
    }

    deinit { try? stop(removeInstance: false) }

    /// Reports writes of `path` from now on: the disk itself (offsets as they
    /// are) or one of its partitions (offsets relative to the partition's
    /// start as sysfs gives it when tracked).
    @discardableResult
    public func track(device path: String) throws -> TrackedDevice {
        let info = try DeviceProbe().device(at: path)
        let offset: UInt64
        let whole: Bool
        if info.deviceNumber == disk.deviceNumber {
            offset = 0
            whole = true
        } else if let partition = info.partition, partition.parent == disk.name {
            offset = partition.start
            whole = false
        } else {
            throw TrackingError.notOnDisk(path, disk: disk.path)
        }
        let id = state.withLock { s in
            defer { s.nextID += 1 }
            return TrackedDeviceID(rawValue: s.nextID)
        }
        let device = TrackedDevice(id: id, path: path, info: info, diskOffset: offset, isWholeDisk: whole)
        reader.devices.withLock { $0.append(device) }
        return device
    }

    /// Stops reporting a device. When it returns, the sink will not be called
    /// for it again.
    public func untrack(_ id: TrackedDeviceID) {
        reader.devices.withLock { $0.removeAll { $0.id == id } }
    }

    /// The devices being reported.
    public var trackedDevices: [TrackedDevice] { reader.devices.withLock { $0 } }

    /// Starts handing completions to the sink. Idempotent; `barrier` starts
    /// the reader too.
    public func start() {
        reader.start()
    }

    /// Makes every completion before this call reach the sink: writes a marker
    /// into each CPU's buffer through `trace_marker`, reads until all come
    /// back, then checks the per-CPU loss counters. The sink runs meanwhile:
    /// the caller must not hold a lock the sink takes. Throws when the marker
    /// does not come back in time or the reader has failed; either way the
    /// caller cannot know what was missed.
    public func barrier(timeout: Duration = .seconds(10)) throws -> BarrierResult {
        reader.start()
        return try reader.barrier(timeout: timeout)
    }

    /// The instance's loss counters as they are now (`overrun`, `commit
    /// overrun` and `dropped events` over all CPUs, since the instance was
    /// made), read without a barrier: what monitoring shows between backups.
    /// Throws when the instance is gone.
    public func currentLossCount() throws -> UInt64 {
        try instance.lossCount(cpus: instance.cpus())
    }

    /// Ends the reader thread and closes the instance's files. With
    /// `removeInstance`, the instance is removed and tracking of the disk ends;
    /// without, it keeps recording so that a later tracker re-attaches to it.
    /// Idempotent; the tracker cannot be used afterwards. Throws when the
    /// instance cannot be removed (another program holds one of its files).
    public func stop(removeInstance: Bool) throws {
        try state.withLock { s in
            if !s.stopped {
                reader.stop()
                reader.closeFiles()
                s.stopped = true
            }
            // rmdir(2) refuses (EBUSY) while any file of the instance is open.
            if removeInstance { try instance.remove() } else { instance.close() }
        }
    }

    /// Removes the instance of the disk at `path` when one exists (no tracker
    /// of this process may be using it): tracking of that disk ends.
    public static func removeInstance(disk path: String) throws {
        let probe = DeviceProbe()
        var info = try probe.device(at: path)
        if let partition = info.partition { info = try probe.device(named: partition.parent) }
        let root = TraceInstance.defaultRoot
        guard Sys.exists("\(root)/instances") else { return }
        try TraceInstance.remove(path: "\(root)/instances/\(TraceInstance.name(forDisk: info.name))")
    }
}

extension WriteTracker {
    /// Pauses or resumes the steady reading; barriers still read. For tests
    /// that must let the buffer overflow.
    func setReadingPaused(_ paused: Bool) { reader.setPaused(paused) }
}
