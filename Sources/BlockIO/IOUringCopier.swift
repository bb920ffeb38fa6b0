import CLiburing
import CShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The io_uring copy pipeline. One ring, owned by one thread that sets it up,
/// submits, reaps and tears it down; no other thread touches it.
///
/// Each of `queueDepth` slots holds one registered, aligned buffer. A slot reads
/// one chunk; the read's completion hands the data to the sink and submits the
/// chunk's writes at once from the same buffer, so the device is never idle
/// waiting for the writer. When a slot's writes complete it takes the next chunk.
/// Reads and writes of different slots are independent: no SQE ordering is
/// relied on, so no links are used; durability comes from the fsync after the
/// ring has drained (an fsync SQE would not cover writes it is not linked to).
final class IOUringCopier {
    private struct Slot {
        var buffer: UnsafeMutableRawPointer
        var chunk = Chunk(index: -1, offset: 0, length: 0)
        var want = 0          // bytes to read (chunk length rounded to alignment)
        var readDone = 0
        var writes: [PlannedWrite] = []
        var writeDone: [Int] = []
        var pendingWrites = 0
        var readIssued = 0.0
        var writeIssued: [Double] = []
    }

    private enum Op: UInt64 { case read = 0, write = 1 }

    private let plan: ChunkPlan
    private let source: BlockFile
    private let target: BlockFile?
    private let sink: ChunkSink
    private let options: CopyOptions
    private let control: CopyControl

    private let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
    private var ringReady = false
    private var buffers: AlignedBuffer?
    private var bufferSize = 0
    private var fixedBuffers = false
    private var fixedFiles = false
    private var slots: [Slot] = []
    private var free: [Int] = []
    private var inflight = 0
    private var queued = 0
    private var failure: CopyError?
    private var stats = CopyStats(engine: "io_uring")

    private init(plan: ChunkPlan, source: BlockFile, target: BlockFile?, sink: ChunkSink,
                 options: CopyOptions, control: CopyControl) {
        self.plan = plan; self.source = source; self.target = target
        self.sink = sink; self.options = options; self.control = control
    }

    deinit {
        if ringReady { io_uring_queue_exit(ring) }
        ring.deallocate()
    }

    /// Runs the copy on a new thread that owns the ring, and waits for it.
    static func runOnOwnThread(plan: ChunkPlan, source: BlockFile, target: BlockFile?, sink: ChunkSink,
                               options: CopyOptions, control: CopyControl) throws -> CopyStats {
        final class Box: @unchecked Sendable {
            var copier: IOUringCopier?
            var result: Result<CopyStats, Error> = .failure(CopyError.cancelled)
        }
        let box = Box()
        box.copier = IOUringCopier(plan: plan, source: source, target: target, sink: sink,
                                   options: options, control: control)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            box.result = Result { try box.copier!.run() }
            box.copier = nil   // the ring is torn down on the thread that owns it
            done.signal()
        }
        thread.name = "ringback-io_uring"
        thread.start()
        done.wait()
        return try box.result.get()
    }

    // MARK: set-up

    private func setUp() throws(CopyError) {
        var entries: UInt32 = 8
        while entries < UInt32(options.queueDepth * 2) && entries < 4096 { entries <<= 1 }
        var params = io_uring_params()
        // One thread submits and reaps: let the kernel skip cross-thread work.
        params.flags = UInt32(IORING_SETUP_SINGLE_ISSUER) | UInt32(IORING_SETUP_COOP_TASKRUN)
        var rc = io_uring_queue_init_params(entries, ring, &params)
        if rc == -EINVAL {
            params = io_uring_params()
            rc = io_uring_queue_init_params(entries, ring, &params)
        }
        guard rc == 0 else { throw .ioUringUnavailable(SystemError(errno: -rc, "set up an io_uring")) }
        ringReady = true

        let (size, align) = CopyEngine.bufferSize(options: options, source: source, target: target)
        bufferSize = size
        let region = AlignedBuffer(count: size * options.queueDepth, alignment: align, zeroed: false)
        buffers = region
        var iovecs = (0..<options.queueDepth).map { iovec(iov_base: region.pointer + $0 * size, iov_len: size) }
        // Registered buffers are pinned once instead of on every I/O. A refusal
        // (RLIMIT_MEMLOCK) only costs speed: fall back to plain reads and writes.
        fixedBuffers = io_uring_register_buffers(ring, &iovecs, UInt32(iovecs.count)) == 0
        var fds: [Int32] = [source.fd]
        if let target { fds.append(target.fd) }
        fixedFiles = io_uring_register_files(ring, &fds, UInt32(fds.count)) == 0
        slots = (0..<options.queueDepth).map { Slot(buffer: region.pointer + $0 * size) }
        free = Array((0..<options.queueDepth).reversed())
    }

    // MARK: the loop

    private func run() throws -> CopyStats {
        try setUp()
        var next = 0
        var limiter = RateLimiter()
        let chunks = plan.chunks
        while true {
            if failure == nil && control.isCancelled { failure = .cancelled }
            var timeout: Double?
            if failure == nil {
                if control.isPaused {
                    timeout = 0.02
                } else {
                    while next < chunks.count, let slot = free.last {
                        let delay = limiter.delay(for: chunks[next].length, speed: control.speedLimit, now: monotonicNow())
                        if delay > 0 { timeout = min(delay, 0.1); break }
                        limiter.issue(chunks[next].length)
                        free.removeLast()
                        startRead(slot: slot, chunk: chunks[next])
                        next += 1
                    }
                }
            }
            // A pause is honoured once nothing is in flight: from then on progress holds still.
            control.setIdle(failure == nil && control.isPaused && inflight == 0)
            if inflight == 0 {
                if failure != nil || next == chunks.count { break }
                sleepSeconds(timeout ?? 0.01)
                continue
            }
            waitAndReap(timeout: timeout)
        }
        if let failure { throw failure }
        return stats
    }

    private func waitAndReap(timeout: Double?) {
        if let timeout {
            _ = submit()
            var ts = __kernel_timespec(tv_sec: Int64(timeout), tv_nsec: Int64((timeout - Double(Int(timeout))) * 1e9))
            var cqe: UnsafeMutablePointer<io_uring_cqe>?
            _ = io_uring_wait_cqe_timeout(ring, &cqe, &ts)
        } else {
            let rc = io_uring_submit_and_wait(ring, 1)
            if rc >= 0 { queued = 0 } else if rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && failure == nil {
                failure = .ioUringUnavailable(SystemError(errno: -rc, "submit to the io_uring"))
            }
        }
        reap()
    }

    @discardableResult
    private func submit() -> Int32 {
        guard queued > 0 else { return 0 }
        let rc = io_uring_submit(ring)
        if rc >= 0 { queued = 0 }
        return rc
    }

    private func reap() {
        var cqes = [UnsafeMutablePointer<io_uring_cqe>?](repeating: nil, count: 128)
        while true {
            let n = Int(io_uring_peek_batch_cqe(ring, &cqes, UInt32(cqes.count)))
            if n == 0 { return }
            for i in 0..<n {
                let cqe = cqes[i]!
                let tag = io_uring_cqe_get_data64(cqe)
                let res = cqe.pointee.res
                inflight -= 1
                let slot = Int(tag >> 32)
                if (tag >> 31) & 1 == Op.read.rawValue {
                    readCompleted(slot: slot, result: res)
                } else {
                    writeCompleted(slot: slot, index: Int(tag & 0x7fff_ffff), result: res)
                }
            }
            io_uring_cq_advance(ring, UInt32(n))
        }
    }

    // MARK: reads

    private func startRead(slot: Int, chunk: Chunk) {
        slots[slot].chunk = chunk
        slots[slot].want = CopyEngine.readLength(chunk, alignment: source.logicalBlockSize)
        slots[slot].readDone = 0
        queueRead(slot: slot)
    }

    private func queueRead(slot s: Int) {
        slots[s].readIssued = monotonicNow()
        let slot = slots[s]
        let sqe = nextSQE()
        let dst = slot.buffer + slot.readDone
        let count = UInt32(slot.want - slot.readDone)
        let offset = slot.chunk.offset + UInt64(slot.readDone)
        let fd: Int32 = fixedFiles ? 0 : source.fd
        if fixedBuffers {
            io_uring_prep_read_fixed(sqe, fd, dst, count, offset, Int32(s))
        } else {
            io_uring_prep_read(sqe, fd, dst, count, offset)
        }
        if fixedFiles { sqe.pointee.flags |= rb_IOSQE_FIXED_FILE }
        io_uring_sqe_set_data64(sqe, UInt64(s) << 32 | Op.read.rawValue << 31)
    }

    private func readCompleted(slot s: Int, result: Int32) {
        let chunk = slots[s].chunk
        if result < 0 {
            let e = -result
            if (e == EAGAIN || e == EINTR) && failure == nil { queueRead(slot: s); return }
            let offset = chunk.offset + UInt64(slots[s].readDone)
            let error = SystemError(errno: e, "read \(source.path) at offset \(offset)")
            if failure == nil && control.decide(CopyFault(operation: .read, error: error, offset: offset,
                                                                         issuedAt: slots[s].readIssued)) == .retry
                && !control.isCancelled {
                queueRead(slot: s)
                return
            }
            fail(.read(error, offset: offset))
            return
        }
        slots[s].readDone += Int(result)
        if slots[s].readDone < chunk.length {
            if result == 0 {
                fail(.unexpectedEnd(path: source.path, offset: chunk.offset + UInt64(slots[s].readDone)))
            } else if failure == nil {
                queueRead(slot: s)   // short read: ask for the rest
            }
            return
        }
        guard failure == nil else { return }
        let buffer = slots[s].buffer
        if chunk.length < bufferSize { memset(buffer + chunk.length, 0, bufferSize - chunk.length) }
        stats.bytesRead += UInt64(chunk.length)
        control.didRead(chunk.length)
        let writes: [PlannedWrite]
        do {
            writes = try sink.plan(chunk, data: UnsafeMutableRawBufferPointer(start: buffer, count: bufferSize))
        } catch {
            fail(.sink("\(error)"))
            return
        }
        if writes.isEmpty || target == nil {
            finish(slot: s)
            return
        }
        slots[s].writes = writes
        slots[s].writeDone = Array(repeating: 0, count: writes.count)
        slots[s].writeIssued = Array(repeating: 0, count: writes.count)
        slots[s].pendingWrites = writes.count
        for i in writes.indices { queueWrite(slot: s, index: i) }
    }

    // MARK: writes

    private func queueWrite(slot s: Int, index i: Int) {
        let w = slots[s].writes[i]
        let done = slots[s].writeDone[i]
        slots[s].writeIssued[i] = monotonicNow()
        let sqe = nextSQE()
        let src = w.source + done
        let count = UInt32(w.length - done)
        let offset = w.targetOffset + UInt64(done)
        let fd: Int32 = fixedFiles ? 1 : target!.fd
        let base = slots[s].buffer
        if fixedBuffers && src >= UnsafeRawPointer(base) && src + Int(count) <= UnsafeRawPointer(base + bufferSize) {
            io_uring_prep_write_fixed(sqe, fd, src, count, offset, Int32(s))
        } else {
            io_uring_prep_write(sqe, fd, src, count, offset)
        }
        if fixedFiles { sqe.pointee.flags |= rb_IOSQE_FIXED_FILE }
        io_uring_sqe_set_data64(sqe, UInt64(s) << 32 | Op.write.rawValue << 31 | UInt64(i))
    }

    private func writeCompleted(slot s: Int, index i: Int, result: Int32) {
        let w = slots[s].writes[i]
        if result <= 0 {
            let e = result == 0 ? EIO : -result
            if (e == EAGAIN || e == EINTR) && failure == nil { queueWrite(slot: s, index: i); return }
            let offset = w.targetOffset + UInt64(slots[s].writeDone[i])
            let error = SystemError(errno: e, "write \(target!.path) at offset \(offset)")
            if failure == nil && control.decide(CopyFault(operation: .write, error: error, offset: offset,
                                                                          issuedAt: slots[s].writeIssued[i])) == .retry
                && !control.isCancelled {
                queueWrite(slot: s, index: i)
                return
            }
            fail(.write(error, offset: offset))
            return
        }
        slots[s].writeDone[i] += Int(result)
        if slots[s].writeDone[i] < w.length {
            if failure == nil { queueWrite(slot: s, index: i) }   // short write: the rest
            return
        }
        stats.bytesWritten += UInt64(w.length)
        slots[s].pendingWrites -= 1
        if slots[s].pendingWrites == 0 && failure == nil { finish(slot: s) }
    }

    private func finish(slot s: Int) {
        let chunk = slots[s].chunk
        slots[s].writes = []
        slots[s].writeDone = []
        sink.written(chunk)
        control.didFinish(chunk)
        free.append(s)
    }

    private func fail(_ error: CopyError) {
        if failure == nil { failure = error }
    }

    /// The next free submission entry; submits what is queued when the ring is full.
    private func nextSQE() -> UnsafeMutablePointer<io_uring_sqe> {
        while true {
            if let sqe = io_uring_get_sqe(ring) {
                inflight += 1
                queued += 1
                return sqe
            }
            let rc = submit()
            if rc < 0 && rc != -EINTR {
                // Completion queue is full: reap to make room, then retry.
                reap()
            }
        }
    }
}
