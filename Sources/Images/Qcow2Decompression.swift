import CZlib
import CZstd

/// Decompression of one qcow2 compressed cluster (qcow2.txt "Compressed
/// Clusters Descriptor"): the stored size is rounded up to whole sectors, so
/// the input may run past the end of the compressed stream; decoding stops
/// when a full cluster has been produced.
struct Qcow2Decompressor {
    /// Header compression_type.
    enum Method: UInt8, Sendable {
        /// Raw deflate, no zlib header, 4 KiB window.
        case deflate = 0
        case zstd = 1
    }

    let method: Method
    private var zstd: OpaquePointer?

    init(method: Method) { self.method = method }

    /// Releases the zstd context, if one was made.
    mutating func close() {
        if let zstd { ZSTD_freeDStream(zstd) }
        zstd = nil
    }

    /// Fills `output` (one cluster) from `input`; returns nil on success or
    /// the reason decoding failed.
    mutating func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> String? {
        switch method {
        case .deflate: inflateCluster(input, into: output)
        case .zstd: zstdCluster(input, into: output)
        }
    }

    private func inflateCluster(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> String? {
        var stream = z_stream()
        // windowBits -12: raw deflate with the 4 KiB window QEMU compresses with.
        guard rb_inflateInit2(&stream, -12) == Z_OK else { return "inflateInit2 failed" }
        defer { inflateEnd(&stream) }
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        stream.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(output.count)
        let rc = inflate(&stream, Z_FINISH)
        // Z_BUF_ERROR with a full output: the sector padding after the stream
        // was not consumed, which is expected.
        if (rc == Z_STREAM_END || rc == Z_BUF_ERROR) && stream.avail_out == 0 { return nil }
        let why = stream.msg.map { String(cString: $0) } ?? "zlib error \(rc)"
        return "deflate stream produced \(output.count - Int(stream.avail_out)) of \(output.count) bytes (\(why))"
    }

    private mutating func zstdCluster(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> String? {
        if zstd == nil { zstd = ZSTD_createDStream() }
        guard let ctx = zstd else { return "cannot allocate a zstd context" }
        ZSTD_DCtx_reset(ctx, ZSTD_reset_session_only)
        var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outBuf = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        while outBuf.pos < outBuf.size {
            let before = (inBuf.pos, outBuf.pos)
            let rc = ZSTD_decompressStream(ctx, &outBuf, &inBuf)
            if ZSTD_isError(rc) != 0 {
                return "zstd: \(String(cString: ZSTD_getErrorName(rc))) after \(outBuf.pos) of \(outBuf.size) bytes"
            }
            if before == (inBuf.pos, outBuf.pos) {
                return "zstd stream ended after \(outBuf.pos) of \(outBuf.size) bytes"
            }
        }
        return nil
    }
}
