import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Steering and observation of a running copy from other threads: pause,
/// cancel, speed, and progress in bytes. The engine thread polls it between
/// submissions, so a pause or a new speed takes effect at the next chunk.
public final class CopyControl: Sendable {
    private let pausedFlag = Atomic<Bool>(false)
    private let cancelledFlag = Atomic<Bool>(false)
    private let speed = Atomic<UInt64>(0)
    private let done = Atomic<UInt64>(0)
    private let total = Atomic<UInt64>(0)
    private let read = Atomic<UInt64>(0)
    private let idle = Atomic<Bool>(false)
    private let completed = Mutex<[Extent]?>(nil)
    private let faultHandler = Mutex<(@Sendable (CopyFault) -> CopyFaultDecision)?>(nil)
    private let readObserver: (@Sendable (UInt64) -> Void)?

    /// `onRead` sees every read as it completes (bytes, on the engine's
    /// thread), across all runs: ringbackd's bytes-copied counter.
    public init(speedLimit: UInt64 = 0, onRead: (@Sendable (UInt64) -> Void)? = nil) {
        speed.store(speedLimit, ordering: .relaxed)
        readObserver = onRead
    }

    /// Whether the engine has honoured a pause: it issues nothing and has no
    /// I/O in flight, so progress holds still until `resume`.
    public var isIdle: Bool { idle.load(ordering: .acquiring) }
    /// Set by the engine when it is paused and drained, cleared when it goes on.
    public func setIdle(_ value: Bool) { idle.store(value, ordering: .releasing) }

    /// Asks the engine to log every chunk it completes (see `completedExtents`),
    /// for a job that must later tell what it never copied.
    public func recordCompletedChunks() { completed.withLock { if $0 == nil { $0 = [] } } }
    /// The device ranges whose chunks were completely copied, in completion order;
    /// empty unless `recordCompletedChunks` was called.
    public var completedExtents: [Extent] { completed.withLock { $0 ?? [] } }

    /// Decides what the engine does when a read or write fails for good (after
    /// EINTR/EAGAIN retries). It runs on the engine's thread and may block, e.g.
    /// while a job stays paused on an error; without a handler every fault fails
    /// the copy.
    public func onFault(_ handler: (@Sendable (CopyFault) -> CopyFaultDecision)?) {
        faultHandler.withLock { $0 = handler }
    }
    /// The decision for `fault` (called by the engines).
    public func decide(_ fault: CopyFault) -> CopyFaultDecision {
        let handler = faultHandler.withLock { $0 }
        return handler?(fault) ?? .fail
    }

    /// Stops issuing new reads; I/O in flight completes. Progress holds still.
    public func pause() { pausedFlag.store(true, ordering: .releasing) }
    public func resume() { pausedFlag.store(false, ordering: .releasing) }
    public var isPaused: Bool { pausedFlag.load(ordering: .acquiring) }

    /// Ends the copy at the next chunk with `CopyError.cancelled`.
    public func cancel() { cancelledFlag.store(true, ordering: .releasing) }
    public var isCancelled: Bool { cancelledFlag.load(ordering: .acquiring) }

    /// Bytes per second; 0 = unlimited. Takes effect for the next chunk.
    public var speedLimit: UInt64 {
        get { speed.load(ordering: .relaxed) }
        set { speed.store(newValue, ordering: .relaxed) }
    }

    /// Bytes whose chunks are completely copied (read and written).
    public var bytesDone: UInt64 { done.load(ordering: .relaxed) }
    /// Bytes read from the source so far (ahead of `bytesDone` by the chunks in flight).
    public var bytesRead: UInt64 { read.load(ordering: .relaxed) }
    /// Bytes the copy will read in all.
    public var bytesTotal: UInt64 { total.load(ordering: .relaxed) }

    /// Resets progress for a run of `bytes` (called by whoever drives the work).
    public func start(total bytes: UInt64) {
        total.store(bytes, ordering: .relaxed)
        done.store(0, ordering: .relaxed)
        read.store(0, ordering: .relaxed)
    }
    public func didRead(_ n: Int) {
        read.add(UInt64(n), ordering: .relaxed)
        readObserver?(UInt64(n))
    }
    public func didFinish(_ n: Int) { done.add(UInt64(n), ordering: .relaxed) }
    /// A chunk is completely copied.
    public func didFinish(_ chunk: Chunk) {
        done.add(UInt64(chunk.length), ordering: .relaxed)
        completed.withLock { $0?.append(Extent(offset: chunk.offset, length: UInt64(chunk.length))) }
    }
}

/// A read or write that failed for good.
public struct CopyFault: Sendable {
    public enum Operation: String, Sendable { case read, write }
    public var operation: Operation
    public var error: SystemError
    /// Offset in the source (read) or target (write).
    public var offset: UInt64
    /// When the failed I/O was issued (monotonic seconds, see `monotonicNow()`):
    /// a failure of an I/O issued before the operator fixed the cause is stale.
    public var issuedAt: Double
    public init(operation: Operation, error: SystemError, offset: UInt64, issuedAt: Double) {
        self.operation = operation; self.error = error; self.offset = offset; self.issuedAt = issuedAt
    }
}

/// What the engine does about a fault.
public enum CopyFaultDecision: Sendable {
    /// Issue the same I/O again.
    case retry
    /// End the copy with the fault's error.
    case fail
}

/// What a finished copy did.
public struct CopyStats: Equatable, Sendable {
    /// Which engine ran: "io_uring" or "sync".
    public var engine: String
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    public var seconds: Double = 0
    /// Why io_uring was not used, when the automatic choice fell back.
    public var fallbackReason: String?
    public init(engine: String) { self.engine = engine }
}

/// A copy that did not complete.
public enum CopyError: Error, CustomStringConvertible, Equatable, Sendable {
    case cancelled
    /// A read failed; carries the device offset.
    case read(SystemError, offset: UInt64)
    /// A write failed; carries the target offset.
    case write(SystemError, offset: UInt64)
    /// The source ended before its size said it would.
    case unexpectedEnd(path: String, offset: UInt64)
    /// The sink refused a chunk (e.g. the image writer failed).
    case sink(String)
    /// io_uring was required but refused.
    case ioUringUnavailable(SystemError)

    public var description: String {
        switch self {
        case .cancelled: "copy cancelled"
        case .read(let e, _): e.description
        case .write(let e, _): e.description
        case .unexpectedEnd(let path, let offset): "\(path) ended unexpectedly at offset \(offset)"
        case .sink(let why): why
        case .ioUringUnavailable(let e): "io_uring is unavailable: \(e)"
        }
    }
}

/// Paces reads to a speed limit: the n-th byte is not issued before
/// n / speed seconds after the limit was set (as QEMU's ratelimit does).
struct RateLimiter {
    private var speed: UInt64 = 0
    private var start: Double = 0
    private var issued: UInt64 = 0

    /// Seconds to wait before `bytes` more may be issued (0: go now).
    mutating func delay(for bytes: Int, speed newSpeed: UInt64, now: Double) -> Double {
        if newSpeed != speed { speed = newSpeed; start = now; issued = 0 }
        guard speed > 0 else { return 0 }
        let due = start + Double(issued) / Double(speed)
        return max(0, due - now)
    }

    mutating func issue(_ bytes: Int) { issued += UInt64(bytes) }
}

/// Monotonic seconds (CLOCK_MONOTONIC), the clock of every deadline and duration.
public func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepSeconds(_ s: Double) {
    guard s > 0 else { return }
    var request = timespec(tv_sec: Int(s), tv_nsec: Int((s - Double(Int(s))) * 1e9))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
