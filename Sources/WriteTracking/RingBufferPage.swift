/// One page (sub-buffer) read from a per-CPU `trace_pipe_raw`, decoded into
/// its data records.
///
/// Layout (kernel/trace/ring_buffer.c, struct buffer_data_page and struct
/// ring_buffer_event; offsets from `events/header_page`):
///
///     page:   u64 timestamp | local_t commit | data[commit size] | zeros
///     record: u32 header (type_len:5 low bits, time_delta:27) then
///             type_len 1...28: type_len × 4 bytes of payload
///             type_len 0:      u32 length (counting itself), payload
///             29 padding:      u32 length of the skipped bytes; time_delta 0
///                              means nothing more on the page
///             30 time extend, 31 absolute time stamp: one more u32, no payload
///
/// Time stamps are not needed for write tracking and are not decoded.
struct RingBufferPage {
    /// Bit 31 of the commit word: events were lost between the previous page
    /// read and this one (RB_MISSED_EVENTS).
    static let missedEventsFlag: UInt64 = 1 << 31
    /// Bit 30: the number lost is stored after the data (RB_MISSED_STORED).
    static let missedStoredFlag: UInt64 = 1 << 30

    /// What the page said about itself.
    struct Summary: Equatable, Sendable {
        /// Bytes of records on the page (the commit word without its flags).
        var dataBytes: Int
        /// Data records handed to the caller.
        var records: Int
        /// The kernel flagged lost events before this page.
        var missedEvents: Bool
        /// How many, when the kernel had room to say.
        var missedCount: UInt64?
    }

    /// Walks the records of `page`, calling `record` with each data record's
    /// payload (which starts with the event's u16 `common_type`). Throws when
    /// the page contradicts its own header, naming `path`.
    static func parse(_ page: UnsafeRawBufferPointer, header: PageHeaderLayout, types: RecordHeaderLayout,
                      path: String, record: (UnsafeRawBufferPointer) throws(TrackingError) -> Void) throws(TrackingError) -> Summary {
        let data = header.dataOffset
        guard page.count >= data else {
            throw .corruptPage(path, "a read returned \(page.count) bytes, less than the \(data)-byte page header")
        }
        let commit: UInt64 = header.commit.size == 8
            ? page.loadUnaligned(fromByteOffset: header.commit.offset, as: UInt64.self)
            : UInt64(page.loadUnaligned(fromByteOffset: header.commit.offset, as: UInt32.self))
        let flags = missedEventsFlag | missedStoredFlag
        let size = Int(commit & ~flags & 0xffff_ffff)
        guard size <= page.count - data else {
            throw .corruptPage(path, "the commit word says \(size) data bytes but the page holds \(page.count - data)")
        }
        var summary = Summary(dataBytes: size, records: 0, missedEvents: commit & missedEventsFlag != 0)
        if commit & missedStoredFlag != 0 && data + size + 8 <= page.count {
            summary.missedCount = page.loadUnaligned(fromByteOffset: data + size, as: UInt64.self)
        }

        let end = data + size
        var position = data
        while position + 4 <= end {
            let word = page.loadUnaligned(fromByteOffset: position, as: UInt32.self)
            let typeLen = word & 0x1f, timeDelta = word >> 5
            let payloadStart: Int, payloadLength: Int
            switch typeLen {
            case types.padding:
                // A null event: the rest of the page is unused.
                // So is a padding header with no room for a length: the writer
                // filled the last word of the page with it (rb_reset_tail()).
                if timeDelta == 0 || position + 8 > end { return summary }
                let skipped = Int(page.loadUnaligned(fromByteOffset: position + 4, as: UInt32.self))
                position += 4 + skipped
                continue
            case types.timeExtend, types.timeStamp:
                position += 8
                continue
            case 0:
                guard position + 8 <= end else { throw .corruptPage(path, "record at byte \(position) lacks its length") }
                let length = Int(page.loadUnaligned(fromByteOffset: position + 4, as: UInt32.self))
                guard length >= 4 else { throw .corruptPage(path, "record at byte \(position) has length \(length)") }
                payloadStart = position + 8
                payloadLength = (length - 4 + 3) & ~3
            case 1...types.dataMaxTypeLen:
                payloadStart = position + 4
                payloadLength = Int(typeLen) * 4
            default:
                throw .corruptPage(path, "record at byte \(position) has unknown type_len \(typeLen)")
            }
            guard payloadStart + payloadLength <= end else {
                throw .corruptPage(path, "record at byte \(position) runs past the \(size) data bytes")
            }
            try record(UnsafeRawBufferPointer(rebasing: page[payloadStart..<(payloadStart + payloadLength)]))
            summary.records += 1
            position = payloadStart + payloadLength
        }
        guard position <= end else {
            throw .corruptPage(path, "a padding record runs past the \(size) data bytes")
        }
        return summary
    }
}
