import Foundation

/// Runs a chunk plan from a source through a sink into a target, on io_uring
/// when the kernel allows it, else with pread/pwrite (DESIGN §4).
public enum CopyEngine {
    /// Copies `plan` from `source`; the sink's writes go to `target` (nil for a
    /// read-only run). Returns when every write has completed and the target
    /// has been fsynced. `warn` receives the reason for a fallback.
    public static func run(plan: ChunkPlan, source: BlockFile, target: BlockFile?, sink: ChunkSink,
                           options: CopyOptions, control: CopyControl = CopyControl(),
                           warn: (String) -> Void = { _ in }) throws -> CopyStats {
        try options.validate()
        control.start(total: plan.totalBytes)
        if options.speedLimit > 0 && control.speedLimit == 0 { control.speedLimit = options.speedLimit }
        let started = monotonicNow()
        var stats: CopyStats
        switch options.engine {
        case .synchronous:
            stats = try SynchronousCopier(plan: plan, source: source, target: target, sink: sink,
                                          options: options, control: control).run()
        case .ioUring, .automatic:
            do {
                stats = try IOUringCopier.runOnOwnThread(plan: plan, source: source, target: target, sink: sink,
                                                         options: options, control: control)
            } catch CopyError.ioUringUnavailable(let why) where options.engine == .automatic {
                let reason = "io_uring is unavailable (\(why)); copying with pread/pwrite"
                warn(reason)
                control.start(total: plan.totalBytes)
                stats = try SynchronousCopier(plan: plan, source: source, target: target, sink: sink,
                                              options: options, control: control).run()
                stats.fallbackReason = reason
            }
        }
        if let target {
            do { try target.sync() } catch { throw CopyError.write(error, offset: 0) }
        }
        stats.seconds = monotonicNow() - started
        return stats
    }

    /// The length to read for a chunk: its bytes rounded up to the source's
    /// O_DIRECT alignment.
    static func readLength(_ chunk: Chunk, alignment: Int) -> Int {
        (chunk.length + alignment - 1) / alignment * alignment
    }

    /// Buffer size for every slot: the chunk size, aligned for both files.
    static func bufferSize(options: CopyOptions, source: BlockFile, target: BlockFile?) -> (size: Int, alignment: Int) {
        let align = max(4096, source.logicalBlockSize, target?.logicalBlockSize ?? 0)
        return ((options.chunkSize + align - 1) / align * align, align)
    }
}

/// The pread/pwrite path: one buffer, one chunk at a time, on the calling thread.
struct SynchronousCopier {
    let plan: ChunkPlan
    let source: BlockFile
    let target: BlockFile?
    let sink: ChunkSink
    let options: CopyOptions
    let control: CopyControl

    func run() throws -> CopyStats {
        var stats = CopyStats(engine: "sync")
        let (size, align) = CopyEngine.bufferSize(options: options, source: source, target: target)
        let buffer = AlignedBuffer(count: size, alignment: align)
        var limiter = RateLimiter()
        for chunk in plan.chunks {
            while control.isPaused && !control.isCancelled {
                control.setIdle(true)
                sleepSeconds(0.02)
            }
            control.setIdle(false)
            if control.isCancelled { throw CopyError.cancelled }
            let wait = limiter.delay(for: chunk.length, speed: control.speedLimit, now: monotonicNow())
            sleepSeconds(wait)
            limiter.issue(chunk.length)

            let want = CopyEngine.readLength(chunk, alignment: source.logicalBlockSize)
            var got = 0
            while true {
                let issued = monotonicNow()
                do {
                    got = try source.read(into: buffer.pointer, count: want, at: chunk.offset)
                    break
                } catch {
                    if control.decide(CopyFault(operation: .read, error: error, offset: chunk.offset, issuedAt: issued)) == .retry
                        && !control.isCancelled { continue }
                    throw CopyError.read(error, offset: chunk.offset)
                }
            }
            guard got >= chunk.length else { throw CopyError.unexpectedEnd(path: source.path, offset: chunk.offset + UInt64(got)) }
            if chunk.length < size { memset(buffer.pointer + chunk.length, 0, size - chunk.length) }
            control.didRead(chunk.length)
            stats.bytesRead += UInt64(chunk.length)
            let writes: [PlannedWrite]
            do { writes = try sink.plan(chunk, data: buffer.bytes) } catch { throw CopyError.sink("\(error)") }
            if !writes.isEmpty, let target {
                for w in writes {
                    while true {
                        let issued = monotonicNow()
                        do {
                            try target.write(from: w.source, count: w.length, at: w.targetOffset)
                            break
                        } catch {
                            let fault = CopyFault(operation: .write, error: error, offset: w.targetOffset, issuedAt: issued)
                            if control.decide(fault) == .retry && !control.isCancelled { continue }
                            throw CopyError.write(error, offset: w.targetOffset)
                        }
                    }
                    stats.bytesWritten += UInt64(w.length)
                }
            }
            sink.written(chunk)
            control.didFinish(chunk)
        }
        return stats
    }
}
