/// One write the sink wants issued for a chunk.
public struct PlannedWrite: Sendable {
    /// Where in the target.
    public var targetOffset: UInt64
    /// The bytes: inside the chunk's buffer, or a buffer of the sink's own that
    /// stays valid until `ChunkSink.written(_:)` is called for the chunk.
    public nonisolated(unsafe) var source: UnsafeRawPointer
    /// Byte count; a multiple of the target's block size when it is O_DIRECT.
    public var length: Int

    public init(targetOffset: UInt64, source: UnsafeRawPointer, length: Int) {
        self.targetOffset = targetOffset
        self.source = source
        self.length = length
    }
}

/// What the copy engine hands each chunk to once its data has been read: the
/// sink decides what is written where (zero clusters skipped, image clusters
/// allocated) and is told when those writes are durable in the target's cache.
///
/// Both methods are called on the engine's thread, one at a time, in read
/// completion order — not necessarily in device order.
public protocol ChunkSink: AnyObject {
    /// The chunk's data is in `data`: `chunk.length` bytes, followed by zeros up
    /// to the buffer's aligned length. Returns the writes to issue; an empty list
    /// finishes the chunk at once.
    func plan(_ chunk: Chunk, data: UnsafeMutableRawBufferPointer) throws -> [PlannedWrite]
    /// Every write planned for `chunk` has completed.
    func written(_ chunk: Chunk)
}

/// A sink that writes nothing (for read benchmarks).
public final class DiscardSink: ChunkSink {
    public init() {}
    public func plan(_ chunk: Chunk, data: UnsafeMutableRawBufferPointer) throws -> [PlannedWrite] { [] }
    public func written(_ chunk: Chunk) {}
}
