#if canImport(Glibc)
import Glibc
#endif
import BlockIO
import Foundation
import Synchronization

/// The reader thread of one tracker: consumes the per-CPU `trace_pipe_raw`
/// pages of its instance, maps write completions to tracked devices and hands
/// them to the sink, and serves barriers.
///
/// Everything below `run()` executes on that one thread; other threads only
/// touch the device table (under its mutex) and the control state (under
/// `control`), and wake the thread through a wake pipe.
final class TraceReader: @unchecked Sendable {
    typealias Sink = @Sendable (TrackedDevice, Extent) -> Void

    /// A barrier asked for by `WriteTracker.barrier(timeout:)`.
    final class BarrierRequest {
        let deadline: ContinuousClock.Instant
        var result: Result<BarrierResult, any Error>?
        init(deadline: ContinuousClock.Instant) { self.deadline = deadline }
    }

    private struct CPUBuffer {
        var cpu: Int
        var fd: Int32
        var path: String
    }

    let instance: TraceInstance
    private let sink: Sink
    private let diskDevice: UInt32
    private let buffers: [CPUBuffer]
    private let markerFD: Int32
    private let wakeFD: Int32
    private let wakeWriteFD: Int32
    private let header: PageHeaderLayout
    private let recordTypes: RecordHeaderLayout
    private let decoder: EventDecoder
    private let page: UnsafeMutableRawBufferPointer

    /// The tracked devices. The reader holds the lock while it delivers a
    /// batch, so that after `untrack` returns the sink never sees that device.
    let devices = Mutex<[TrackedDevice]>([])

    // Control state, guarded by `control`.
    private let control = NSCondition()
    private var stopping = false
    private var paused = false
    private var finished = false
    private var failure: (any Error)?
    private var barriers: [BarrierRequest] = []
    private var started = false
    private var filesClosed = false

    // Reader-thread state.
    private var lossBaseline: UInt64
    /// A page said events were missed, a page could not be decoded, or the
    /// instance was found configured for something else: the next barrier
    /// reports a loss.
    private var lossSeen: Bool
    private var barrierSerial = 0
    private var markersAwaited: Set<String> = []
    private var unpollable: Set<Int> = []
    /// Queued writes of a bio-based disk, to join split bios.
    private var inFlight = InFlightWrites()

    /// How long the thread lets events accumulate after a pass that found
    /// some: fewer, fuller page reads under load (a 4 MiB per-CPU buffer
    /// holds ~70,000 completions, seconds at any loop-device rate).
    static let batchMilliseconds: Int32 = 10
    /// How often an idle thread looks at its control state.
    static let idleMilliseconds: Int32 = 1000

    /// Opens every per-CPU pipe and reads the layouts; the thread is not yet
    /// running. `lossBaseline`: see `WriteTracker.init`.
    init(instance: TraceInstance, lossBaseline: UInt64?, sink: @escaping Sink) throws {
        self.instance = instance
        self.sink = sink
        self.diskDevice = TraceInstance.kernelDeviceNumber(instance.disk)
        self.lossBaseline = lossBaseline ?? 0
        // Continuing an earlier tracker whose instance is gone: whatever was
        // written since it went was never recorded.
        self.lossSeen = instance.configurationDiffered || (instance.created && lossBaseline != nil)
        header = try instance.pageHeaderLayout()
        recordTypes = try instance.recordHeaderLayout()
        var blockFormats: [(EventFormat, path: String)] = []
        for event in TraceInstance.blockEvents(bioBased: instance.bioBased) {
            blockFormats.append((try instance.eventFormat(event), path: instance.file("events/\(event)/format")))
        }
        decoder = try EventDecoder(blockEvents: blockFormats, print: try instance.eventFormat("ftrace/print"),
                                   printPath: instance.file("events/ftrace/print/format"))
        let pageSize = try instance.subBufferSize()
        page = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: 8)

        var opened: [CPUBuffer] = []
        var marker: Int32 = -1
        var wake: (Int32, Int32) = (-1, -1)
        do {
            for cpu in try instance.cpus() {
                let path = instance.file("per_cpu/cpu\(cpu)/trace_pipe_raw")
                opened.append(CPUBuffer(cpu: cpu, fd: try Sys.open(path, O_RDONLY | O_NONBLOCK, purpose: "for reading"),
                                        path: path))
            }
            marker = try Sys.open(instance.file("trace_marker"), O_WRONLY, purpose: "for writing")
            wake = try Sys.wakePipe()
        } catch {
            for b in opened { Sys.close(b.fd) }
            Sys.close(marker)
            page.deallocate()
            throw error
        }
        buffers = opened
        markerFD = marker
        (wakeFD, wakeWriteFD) = wake
    }

    deinit {
        closeFiles()
        Sys.close(wakeFD)
        Sys.close(wakeWriteFD)
        page.deallocate()
    }

    /// Closes the instance's files (after `stop()`), so that the instance can
    /// be removed. Idempotent.
    func closeFiles() {
        control.lock()
        defer { control.unlock() }
        precondition(finished || !started, "closeFiles() while the reader thread runs")
        guard !filesClosed else { return }
        filesClosed = true
        for b in buffers { Sys.close(b.fd) }
        Sys.close(markerFD)
    }

    // MARK: - Control from other threads

    /// Starts the thread unless it was started (or stopped) before.
    func start() {
        control.lock()
        let first = !started && !stopping
        started = true
        control.unlock()
        guard first else { return }
        let thread = Thread { [self] in run() }
        thread.name = "ringback-tracker-\(instance.name)"
        thread.start()
    }

    /// Ends the thread and waits for it. Idempotent.
    func stop() {
        control.lock()
        stopping = true
        if !started {
            finished = true
            control.broadcast()
        }
        control.unlock()
        Sys.signal(wakePipe: wakeWriteFD)
        control.lock()
        while !finished { control.wait() }
        control.unlock()
    }

    /// Stops or resumes the steady reading (barriers still read). Tests use it
    /// to let a buffer fill up.
    func setPaused(_ value: Bool) {
        control.lock()
        paused = value
        control.unlock()
        Sys.signal(wakePipe: wakeWriteFD)
    }

    /// Has the thread run a barrier and waits for its result.
    func barrier(timeout: Duration) throws -> BarrierResult {
        let request = BarrierRequest(deadline: .now + timeout)
        control.lock()
        if finished {
            control.unlock()
            throw TrackingError.stopped(instance.path, failure.map { "its reader failed: \($0)" } ?? "it was stopped")
        }
        barriers.append(request)
        control.unlock()
        Sys.signal(wakePipe: wakeWriteFD)
        control.lock()
        defer { control.unlock() }
        while request.result == nil && !finished { control.wait() }
        guard let result = request.result else {
            throw TrackingError.stopped(instance.path, failure.map { "its reader failed: \($0)" } ?? "it was stopped")
        }
        return try result.get()
    }

    // MARK: - The thread

    private func run() {
        do {
            while true {
                control.lock()
                let stop = stopping, pause = paused, request = barriers.first
                control.unlock()
                if stop { break }
                if let request {
                    let result = Result { try serve(request) }
                    control.lock()
                    request.result = result
                    barriers.removeFirst()
                    control.broadcast()
                    control.unlock()
                    continue
                }
                if pause {
                    try waitForWake(milliseconds: Self.idleMilliseconds, includingBuffers: false)
                } else if try drainAll() {
                    try waitForWake(milliseconds: Self.batchMilliseconds, includingBuffers: false)
                } else {
                    try waitForWake(milliseconds: Self.idleMilliseconds, includingBuffers: true)
                }
            }
        } catch {
            control.lock()
            failure = error
            control.unlock()
        }
        control.lock()
        finished = true
        for request in barriers where request.result == nil {
            request.result = .failure(TrackingError.stopped(instance.path, failure.map { "its reader failed: \($0)" }
                                                              ?? "it was stopped"))
        }
        barriers.removeAll()
        control.broadcast()
        control.unlock()
    }

    /// Sleeps until woken through the wake pipe, until a CPU buffer has data
    /// (with `includingBuffers`; `buffer_percent` 0 makes that any data), or
    /// for `milliseconds`.
    private func waitForWake(milliseconds: Int32, includingBuffers: Bool) throws {
        let polled = includingBuffers ? buffers.filter { !unpollable.contains($0.cpu) } : []
        let states = try Sys.poll([wakeFD] + polled.map(\.fd), timeoutMilliseconds: milliseconds)
        // A CPU without a buffer (offline since boot) answers poll with
        // POLLERR at once (ring_buffer_poll_wait()); polling it again would
        // spin. It is still read on every pass.
        for (buffer, state) in zip(polled, states.dropFirst()) where state == .failed { unpollable.insert(buffer.cpu) }
        Sys.clear(wakePipe: wakeFD)
    }

    /// Reads every CPU buffer until it is empty; true when anything was read.
    @discardableResult
    private func drainAll() throws -> Bool {
        try devices.withLock { tracked in try drainAllLocked(tracked) }
    }

    private func drainAllLocked(_ tracked: [TrackedDevice]) throws -> Bool {
        var any = false
        for buffer in buffers where try drain(buffer, tracked: tracked) { any = true }
        return any
    }

    /// Reads one CPU buffer until it is empty (EAGAIN), delivering as it goes.
    private func drain(_ buffer: CPUBuffer, tracked: [TrackedDevice]) throws -> Bool {
        var any = false
        while let n = try Sys.readNonBlocking(buffer.fd, into: page, path: buffer.path), n > 0 {
            any = true
            do {
                let summary = try RingBufferPage.parse(UnsafeRawBufferPointer(rebasing: page[0..<n]), header: header,
                                                       types: recordTypes, path: buffer.path) { payload in
                    handle(decoder.decode(payload), tracked: tracked)
                }
                if summary.missedEvents { lossSeen = true }
            } catch {
                // An undecodable page is a page of lost events: the barrier
                // reports it and tracking goes on with the next page.
                lossSeen = true
            }
        }
        return any
    }

    private func handle(_ record: EventDecoder.Record, tracked: [TrackedDevice]) {
        switch record {
        case .queued(let queued):
            guard queued.changesData, queued.device == diskDevice else { return }
            if !inFlight.queued(sector: queued.sector, sectors: queued.sectors) { lossSeen = true }
        case .completion(var completion):
            guard completion.changesData, completion.device == diskDevice else { return }
            if instance.bioBased {
                let whole = inFlight.completed(sector: completion.sector, sectors: completion.sectors)
                completion.sector = whole.sector
                completion.sectors = UInt32(clamping: whole.sectors)
            }
            guard let bytes = completion.diskBytes else { return }
            for device in tracked {
                if let extent = device.deviceExtent(ofDiskBytes: bytes) { sink(device, extent) }
            }
        case .marker(let text):
            markersAwaited.remove(text)
        case .other:
            break
        }
    }

    // MARK: - Barrier

    /// Writes a marker into every CPU's buffer (the thread pins itself to each
    /// CPU in turn), reads until all markers are back, then compares the
    /// per-CPU loss counters with the last barrier's.
    ///
    /// One marker per CPU rather than one overall: a completion recorded on
    /// CPU 1 by an interrupt that nested inside another writer becomes visible
    /// only when that writer commits (rb_end_commit() in ring_buffer.c), so
    /// seeing a marker on CPU 0 proves nothing about CPU 1. A marker written
    /// on CPU 1 cannot pass an unfinished commit there, since the ring buffer
    /// is written with preemption off.
    private func serve(_ request: BarrierRequest) throws -> BarrierResult {
        barrierSerial += 1
        let prefix = "ringback-barrier \(Sys.processID).\(barrierSerial)"
        markersAwaited = []
        if let original = try? Sys.currentAffinity() {
            defer { try? Sys.setAffinity(original) }
            for buffer in buffers {
                // A CPU that is offline or outside our cpuset cannot take a
                // marker; the final drain below reads it anyway.
                guard let only = Sys.CPUMask(only: buffer.cpu), (try? Sys.setAffinity(only)) != nil else { continue }
                let text = "\(prefix) cpu\(buffer.cpu)"
                try writeMarker(text, drainingFirst: buffer, deadline: request.deadline)
                markersAwaited.insert(text)
            }
        }
        if markersAwaited.isEmpty {
            let text = "\(prefix) any"
            try writeMarker(text, drainingFirst: nil, deadline: request.deadline)
            markersAwaited.insert(text)
        }
        while !markersAwaited.isEmpty {
            if try drainAll() { continue }
            if ContinuousClock.now > request.deadline {
                throw TrackingError.barrierTimeout(instance.path, "\(markersAwaited.count) marker(s) written to trace_marker never came back")
            }
            Sys.sleep(milliseconds: 1)
        }
        try drainAll()
        let count = try instance.lossCount(cpus: buffers.map(\.cpu))
        let lost = lossSeen || count > lossBaseline
        lossSeen = false
        lossBaseline = max(lossBaseline, count)
        return BarrierResult(lostEvents: lost, lossCount: count)
    }

    /// Writes one marker. A full buffer refuses it (the write fails, EBADF on
    /// current kernels), so on failure the CPU's buffer is drained and the
    /// write retried until the deadline.
    private func writeMarker(_ text: String, drainingFirst buffer: CPUBuffer?, deadline: ContinuousClock.Instant) throws {
        let path = instance.file("trace_marker")
        while true {
            do {
                try Sys.write(markerFD, text, path: path)
                return
            } catch {
                if ContinuousClock.now > deadline {
                    throw TrackingError.barrierTimeout(instance.path, "the marker could not be written: \(error)")
                }
                let drained = try devices.withLock { tracked in
                    if let buffer { return try drain(buffer, tracked: tracked) }
                    return try drainAllLocked(tracked)
                }
                if !drained { Sys.sleep(milliseconds: 1) }
            }
        }
    }
}

/// What a barrier found.
public struct BarrierResult: Equatable, Sendable {
    /// Events were dropped or overwritten since the previous barrier (or, at
    /// the first, beyond the baseline the tracker was opened with), or a page
    /// could not be decoded: every bitmap of the disk must become inconsistent.
    public var lostEvents: Bool
    /// The instance's total loss counter (`overrun` + `commit overrun` +
    /// `dropped events` over all CPUs) at this barrier. A daemon saves it and
    /// passes it back as the baseline when it re-attaches.
    public var lossCount: UInt64

    public init(lostEvents: Bool, lossCount: UInt64) {
        self.lostEvents = lostEvents
        self.lossCount = lossCount
    }
}
