import BlockIO

/// A completed block request or bio, as `block_rq_complete` and
/// `block_bio_complete` record it (include/trace/events/block.h).
struct BlockCompletion: Equatable, Sendable {
    /// The whole disk's dev_t in the kernel's encoding (major << 20 | minor).
    var device: UInt32
    /// First 512-byte sector, relative to the whole disk (partitions are
    /// remapped before the request reaches the driver).
    var sector: UInt64
    /// Number of 512-byte sectors completed.
    var sectors: UInt32
    /// Whether the operation changes data: see `RWBS.changesData`.
    var changesData: Bool

    /// The disk bytes the completion covers; sector units are 512 bytes
    /// whatever the logical block size (include/linux/blk_types.h, SECTOR_SHIFT).
    /// Nil for an empty range or one past 2^64 bytes (a passthrough command
    /// with no meaningful position).
    var diskBytes: Extent? {
        let (offset, overflow) = sector.multipliedReportingOverflow(by: 512)
        let length = UInt64(sectors) * 512
        guard length > 0, !overflow, offset <= UInt64.max - length else { return nil }
        return Extent(offset: offset, length: length)
    }
}

/// The `rwbs` string of block trace events (blk_fill_rwbs() in
/// block/blk-core.c): an optional `F` (preflush), one operation letter — `R`
/// read, `W` write, `D` discard (`DE` secure erase), `F` empty flush, `N`
/// anything else (write-zeroes, zone operations, driver passthrough) — then
/// flags: `F` FUA, `A` readahead, `S` sync, `M` metadata, `U` atomic.
enum RWBS {
    /// True when the operation may change the device's contents: `W`, `D` or
    /// `N` anywhere. Reads and empty flushes leave data alone. `N` is taken as
    /// a change because write-zeroes (`blkdiscard -z`) completes as `N`; the
    /// other `N` operations are rare and over-marking is safe.
    static func changesData<Bytes: Sequence>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        for byte in bytes {
            switch byte {
            case 0: return false
            case UInt8(ascii: "W"), UInt8(ascii: "D"), UInt8(ascii: "N"): return true
            default: continue
            }
        }
        return false
    }

    static func changesData(_ text: String) -> Bool { changesData(text.utf8) }
}

/// Turns record payloads into block completions and barrier markers, using
/// the field offsets of each event's `format` file.
struct EventDecoder: Sendable {
    /// Where the fields of one block completion event are.
    struct BlockLayout: Sendable {
        var id: UInt16
        var device: EventFormat.Field
        var sector: EventFormat.Field
        var sectors: EventFormat.Field
        var rwbs: EventFormat.Field
        /// `block_bio_queue`: the bio as submitted, before any split (see
        /// `InFlightWrites`), rather than a completion.
        var isQueue: Bool

        init(_ format: EventFormat, path: String) throws(TrackingError) {
            id = format.id
            isQueue = format.name == "block_bio_queue"
            device = try format.field("dev", sizes: [4, 8], path: path)
            sector = try format.field("sector", sizes: [4, 8], path: path)
            sectors = try format.field("nr_sector", sizes: [4], path: path)
            rwbs = try format.field("rwbs", sizes: Set(1...64), path: path)
        }
    }

    /// What a record is.
    enum Record: Equatable {
        case completion(BlockCompletion)
        /// A bio queued to a bio-based device (`block_bio_queue`).
        case queued(BlockCompletion)
        /// A `trace_marker` write (ftrace `print`), without its trailing newline.
        case marker(String)
        /// Any other event (none are enabled, but a foreign writer may add them).
        case other
    }

    var blockLayouts: [BlockLayout]
    /// The `print` event's ID and the offset of its `buf` field.
    var printID: UInt16
    var printText: Int

    init(blockEvents: [(EventFormat, path: String)], print: EventFormat, printPath: String) throws(TrackingError) {
        var layouts: [BlockLayout] = []
        for (format, path) in blockEvents { layouts.append(try BlockLayout(format, path: path)) }
        blockLayouts = layouts
        printID = print.id
        printText = try print.field("buf", sizes: [0], path: printPath).offset
    }

    /// Decodes one record payload (which starts with the u16 `common_type`).
    func decode(_ payload: UnsafeRawBufferPointer) -> Record {
        guard payload.count >= 2 else { return .other }
        let type = payload.loadUnaligned(as: UInt16.self)
        for layout in blockLayouts where layout.id == type {
            guard let device = load(layout.device, payload), let sector = load(layout.sector, payload),
                  let sectors = load(layout.sectors, payload),
                  layout.rwbs.offset + layout.rwbs.size <= payload.count
            else { return .other }
            let rwbs = UnsafeRawBufferPointer(rebasing: payload[layout.rwbs.offset..<(layout.rwbs.offset + layout.rwbs.size)])
            let event = BlockCompletion(device: UInt32(truncatingIfNeeded: device), sector: sector,
                                        sectors: UInt32(truncatingIfNeeded: sectors), changesData: RWBS.changesData(rwbs))
            return layout.isQueue ? .queued(event) : .completion(event)
        }
        if type == printID && printText <= payload.count {
            let bytes = payload[printText...].prefix { $0 != 0 }
            var text = String(decoding: bytes, as: UTF8.self)
            if text.last == "\n" { text.removeLast() }
            return .marker(text)
        }
        return .other
    }

    /// An unsigned little-endian (host order) field of 1, 2, 4 or 8 bytes.
    private func load(_ field: EventFormat.Field, _ payload: UnsafeRawBufferPointer) -> UInt64? {
        guard field.offset >= 0, field.offset + field.size <= payload.count else { return nil }
        switch field.size {
        case 1: return UInt64(payload.loadUnaligned(fromByteOffset: field.offset, as: UInt8.self))
        case 2: return UInt64(payload.loadUnaligned(fromByteOffset: field.offset, as: UInt16.self))
        case 4: return UInt64(payload.loadUnaligned(fromByteOffset: field.offset, as: UInt32.self))
        case 8: return payload.loadUnaligned(fromByteOffset: field.offset, as: UInt64.self)
        default: return nil
        }
    }
}
