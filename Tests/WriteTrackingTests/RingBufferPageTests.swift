import BlockDevices
import BlockIO
import Testing
@testable import WriteTracking

/// Decoding of tracefs layouts and binary ring-buffer pages, on texts copied
/// from a 6.18 kernel and on pages built byte by byte. No root needed.
struct LayoutParsingTests {
    @Test func blockRqCompleteFormatGivesTheFieldsOffsets() throws {
        let format = try EventFormat(parsing: KernelTexts.rqCompleteFormat, path: "rq/format")
        #expect(format.name == "block_rq_complete")
        #expect(format.id == 2107)
        #expect(format.fields["common_type"] == .init(offset: 0, size: 2, signed: false))
        #expect(format.fields["dev"] == .init(offset: 8, size: 4, signed: false))
        #expect(format.fields["sector"] == .init(offset: 16, size: 8, signed: false))
        #expect(format.fields["nr_sector"] == .init(offset: 24, size: 4, signed: false))
        #expect(format.fields["error"] == .init(offset: 28, size: 4, signed: true))
        // An array keeps its name without the [10]; a __data_loc its last word.
        #expect(format.fields["rwbs"] == .init(offset: 34, size: 10, signed: false))
        #expect(format.fields["cmd"] == .init(offset: 44, size: 4, signed: false))
    }

    @Test func printFormatHasAnOpenEndedBuffer() throws {
        let format = try EventFormat(parsing: KernelTexts.printFormat, path: "print/format")
        #expect(format.id == 5)
        #expect(format.fields["buf"] == .init(offset: 16, size: 0, signed: false))
        #expect(format.fields["ip"] == .init(offset: 8, size: 8, signed: false))
    }

    @Test func aFormatWithoutIDOrWithAMissingFieldIsRefusedByName() throws {
        let noID = KernelTexts.rqCompleteFormat.replacingOccurrences(of: "ID: 2107\n", with: "")
        #expect(throws: TrackingError.self) { try EventFormat(parsing: noID, path: "x/format") }
        let noRWBS = KernelTexts.rqCompleteFormat.split(separator: "\n").filter { !$0.contains("rwbs") }
            .joined(separator: "\n")
        let format = try EventFormat(parsing: noRWBS, path: "x/format")
        #expect {
            try EventDecoder.BlockLayout(format, path: "x/format")
        } throws: { error in
            let e = error as? TrackingError
            return e?.code == .unsupportedFormat && e?.path == "x/format"
                && "\(error)" == "cannot parse x/format: event block_rq_complete has no field rwbs"
        }
    }

    @Test func headerPageGivesTimestampCommitAndData() throws {
        let layout = try PageHeaderLayout(parsing: KernelTexts.headerPage, path: "header_page")
        #expect(layout == .lp64)
        // A 32-bit kernel's 4-byte local_t moves the data to offset 12.
        let text32 = KernelTexts.headerPage
            .replacingOccurrences(of: "local_t commit;\toffset:8;\tsize:8;", with: "local_t commit;\toffset:8;\tsize:4;")
            .replacingOccurrences(of: "char data;\toffset:16;\tsize:4080;", with: "char data;\toffset:12;\tsize:4084;")
        let layout32 = try PageHeaderLayout(parsing: text32, path: "header_page")
        #expect(layout32.commit.size == 4 && layout32.dataOffset == 12)
    }

    @Test func headerEventGivesTheRecordTypes() throws {
        let types = try RecordHeaderLayout(parsing: KernelTexts.headerEvent, path: "header_event")
        #expect(types == RecordHeaderLayout())
        #expect((types.padding, types.timeExtend, types.timeStamp, types.dataMaxTypeLen) == (29, 30, 31, 28))
        let other = KernelTexts.headerEvent.replacingOccurrences(of: "5 bits", with: "6 bits")
        #expect(throws: TrackingError.self) { try RecordHeaderLayout(parsing: other, path: "header_event") }
    }

    @Test func statsLossIsTheSumOfOverrunCommitOverrunAndDropped() throws {
        let stats = """
            entries: 12
            overrun: 3
            commit overrun: 4
            bytes: 480
            oldest event ts:  2694.327244
            now ts:  2756.528836
            dropped events: 5
            read events: 7

            """
        #expect(try TraceInstance.lossCount(stats: stats, path: "stats") == 12)
        let clean = stats.replacingOccurrences(of: ": 3\n", with: ": 0\n").replacingOccurrences(of: ": 4\n", with: ": 0\n")
            .replacingOccurrences(of: "dropped events: 5", with: "dropped events: 0")
        #expect(try TraceInstance.lossCount(stats: clean, path: "stats") == 0)
        #expect(throws: TrackingError.self) {
            try TraceInstance.lossCount(stats: "entries: 1\noverrun: 0\n", path: "stats")
        }
    }
}

struct RWBSTests {
    @Test(arguments: [
        ("W", true), ("WS", true), ("FWS", true), ("WFS", true), ("WM", true), ("WSU", true),
        ("D", true), ("DS", true), ("DE", true), ("N", true), ("NS", true),
        ("R", false), ("RA", false), ("RS", false), ("RM", false), ("FR", false),
        ("F", false), ("FS", false), ("FF", false), ("", false),
    ])
    func writeDiscardAndWriteZeroesChangeData(rwbs: String, changes: Bool) {
        #expect(RWBS.changesData(rwbs) == changes)
    }

    @Test func bytesAfterTheTerminatorAreIgnored() {
        #expect(!RWBS.changesData([UInt8(ascii: "R"), 0, UInt8(ascii: "W")]))
    }
}

struct DeviceMappingTests {
    static let partition = TrackedDevice.fixture(offset: 4 << 20, size: 4 << 20, whole: false)
    static let disk = TrackedDevice.fixture(offset: 0, size: 64 << 20, whole: true)

    @Test(arguments: [
        // Entirely inside: shifted by the partition start.
        (Extent(offset: (4 << 20) + 65536, length: 4096), Extent(offset: 65536, length: 4096) as Extent?),
        // Straddling its start and its end: clipped.
        (Extent(offset: (4 << 20) - 512, length: 1024), Extent(offset: 0, length: 512)),
        (Extent(offset: (8 << 20) - 512, length: 1024), Extent(offset: (4 << 20) - 512, length: 512)),
        // Covering it whole.
        (Extent(offset: 0, length: 64 << 20), Extent(offset: 0, length: 4 << 20)),
        // Just before and just after: nothing.
        (Extent(offset: (4 << 20) - 4096, length: 4096), nil),
        (Extent(offset: 8 << 20, length: 4096), nil),
        (Extent(offset: 5 << 20, length: 0), nil),
    ])
    func partitionRangesAreRelativeToItsStart(disk range: Extent, expected: Extent?) {
        #expect(Self.partition.deviceExtent(ofDiskBytes: range) == expected)
    }

    @Test func theWholeDiskTakesRangesAsTheyAre() {
        let beyond = Extent(offset: 70 << 20, length: 4096)   // after a resize
        #expect(Self.disk.deviceExtent(ofDiskBytes: beyond) == beyond)
        #expect(Self.disk.deviceExtent(ofDiskBytes: Extent(offset: 512, length: 512)) == Extent(offset: 512, length: 512))
    }

    @Test func completionsBeyondTwoToTheSixtyFourBytesHaveNoRange() {
        let c = BlockCompletion(device: 1, sector: UInt64.max / 256, sectors: 8, changesData: true)
        #expect(c.diskBytes == nil)
        #expect(BlockCompletion(device: 1, sector: 10, sectors: 0, changesData: true).diskBytes == nil)
        #expect(BlockCompletion(device: 1, sector: 2049, sectors: 1, changesData: true).diskBytes
                    == Extent(offset: 2049 * 512, length: 512))
    }
}

struct RingBufferPageTests {
    let decoder: EventDecoder

    init() throws {
        let rq = try EventFormat(parsing: KernelTexts.rqCompleteFormat, path: "rq")
        let bio = try EventFormat(parsing: KernelTexts.bioCompleteFormat, path: "bio")
        let print = try EventFormat(parsing: KernelTexts.printFormat, path: "print")
        decoder = try EventDecoder(blockEvents: [(rq, path: "rq"), (bio, path: "bio")], print: print, printPath: "print")
    }

    /// Parses `page` and decodes its records.
    func records(_ page: [UInt8]) throws -> (RingBufferPage.Summary, [EventDecoder.Record]) {
        var out: [EventDecoder.Record] = []
        let summary = try page.withUnsafeBytes { raw in
            try RingBufferPage.parse(raw, header: .lp64, types: RecordHeaderLayout(), path: "cpu0") { out.append(decoder.decode($0)) }
        }
        return (summary, out)
    }

    @Test func smallAndLongRecordsBetweenTimeExtendsAndPadding() throws {
        var b = PageBuilder()
        b.small(PageBuilder.rqComplete(dev: 7 << 20 | 4, sector: 2049, sectors: 1, rwbs: "WS"))
        b.timeExtend()
        b.small(PageBuilder.rqComplete(dev: 7 << 20 | 4, sector: 80, sectors: 8, rwbs: "RS"))
        b.padding(skip: 20)   // a discarded event
        b.timeStamp()
        b.long(PageBuilder.bioComplete(dev: 253 << 20, sector: 1 << 40, sectors: 128, rwbs: "D"))
        b.small(PageBuilder.print("ringback-barrier 1.1 cpu0\n"))
        let (summary, records) = try records(b.page())
        #expect(summary == .init(dataBytes: b.data.count, records: 4, missedEvents: false, missedCount: nil))
        #expect(records == [
            .completion(BlockCompletion(device: 7 << 20 | 4, sector: 2049, sectors: 1, changesData: true)),
            .completion(BlockCompletion(device: 7 << 20 | 4, sector: 80, sectors: 8, changesData: false)),
            .completion(BlockCompletion(device: 253 << 20, sector: 1 << 40, sectors: 128, changesData: true)),
            .marker("ringback-barrier 1.1 cpu0"),
        ])
    }

    @Test func aNullPaddingEndsThePageAndAFullPageIsRead() throws {
        var b = PageBuilder()
        b.small(PageBuilder.rqComplete(dev: 1, sector: 8, sectors: 8, rwbs: "W"))
        b.u32(29)   // type_len 29 with time_delta 0: nothing more
        b.small(PageBuilder.rqComplete(dev: 1, sector: 16, sectors: 8, rwbs: "W"))
        #expect(try records(b.page()).1.count == 1)

        // A page filled to its last byte, ending in a lone padding word.
        var full = PageBuilder()
        let record = PageBuilder.rqComplete(dev: 1, sector: 0, sectors: 8, rwbs: "W")
        while full.data.count + 4 + record.count <= 4080 - 12 { full.small(record) }
        full.padding(skip: 4080 - full.data.count - 12)
        full.u32(29 | 1 << 5)
        let (summary, out) = try records(full.page())
        #expect(summary.dataBytes == 4080)
        #expect(out.count == summary.records && out.count > 60)
    }

    @Test func missedEventFlagsAndTheStoredCount() throws {
        var b = PageBuilder()
        b.small(PageBuilder.rqComplete(dev: 1, sector: 0, sectors: 8, rwbs: "W"))
        let flagged = try records(b.page(flags: RingBufferPage.missedEventsFlag)).0
        #expect(flagged.missedEvents && flagged.missedCount == nil && flagged.dataBytes == b.data.count)
        let counted = try records(b.page(flags: RingBufferPage.missedEventsFlag | RingBufferPage.missedStoredFlag,
                                         trailer: 1234)).0
        #expect(counted.missedEvents && counted.missedCount == 1234)
    }

    @Test func pagesThatContradictTheirHeaderAreRefused() throws {
        var b = PageBuilder()
        b.small(PageBuilder.rqComplete(dev: 1, sector: 0, sectors: 8, rwbs: "W"))
        // A commit larger than the page.
        #expect(throws: TrackingError.self) { try records(b.page(commit: 5000)) }
        // A commit that cuts the last record in half.
        #expect(throws: TrackingError.self) { try records(b.page(commit: UInt64(b.data.count - 8))) }
        // A record with a length field shorter than itself.
        var bad = PageBuilder()
        bad.u32(0)
        bad.u32(2)
        #expect(throws: TrackingError.self) { try records(bad.page()) }
        // Fewer bytes than a page header.
        #expect(throws: TrackingError.self) { try records([0, 0, 0]) }
    }

    @Test func anEmptyPageHasNoRecords() throws {
        let (summary, out) = try records(PageBuilder().page())
        #expect(summary.records == 0 && summary.dataBytes == 0 && out.isEmpty)
    }
}

// MARK: - Fixtures

extension TrackedDevice {
    static func fixture(offset: UInt64, size: UInt64, whole: Bool) -> TrackedDevice {
        let info = BlockDeviceInfo(name: "loop9p2", path: "/dev/loop9p2", major: 259, minor: 2, size: size,
                                   logicalSectorSize: 512, physicalSectorSize: 512, kind: .partition)
        return TrackedDevice(id: TrackedDeviceID(rawValue: 1), path: info.path, info: info, diskOffset: offset,
                             isWholeDisk: whole)
    }
}

/// Builds the data part of a ring-buffer page, record by record, as
/// kernel/trace/ring_buffer.c writes it on a little-endian 64-bit machine.
struct PageBuilder {
    var data: [UInt8] = []

    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data += $0 } }

    /// type_len = words of payload (payloads up to 112 bytes).
    mutating func small(_ payload: [UInt8]) {
        precondition(payload.count % 4 == 0 && payload.count <= 112)
        u32(UInt32(payload.count / 4) | 7 << 5)
        data += payload
    }

    /// type_len 0 and a length word that counts itself.
    mutating func long(_ payload: [UInt8]) {
        precondition(payload.count % 4 == 0)
        u32(3 << 5)
        u32(UInt32(payload.count + 4))
        data += payload
    }

    mutating func timeExtend() { u32(30 | 5 << 5); u32(99) }
    mutating func timeStamp() { u32(31 | 5 << 5); u32(1) }

    /// A discarded event (rb_event_discard()): padding with a time delta and
    /// a length that counts the length word and the `skip` bytes after it.
    mutating func padding(skip: Int) {
        u32(29 | 1 << 5)
        u32(UInt32(skip + 4))
        data += [UInt8](repeating: 0xee, count: skip)
    }

    /// A 4096-byte page: time stamp, commit word (data size | flags), data.
    func page(flags: UInt64 = 0, commit: UInt64? = nil, trailer: UInt64? = nil) -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(123_456).littleEndian) { bytes += $0 }
        withUnsafeBytes(of: ((commit ?? UInt64(data.count)) | flags).littleEndian) { bytes += $0 }
        bytes += data
        if let trailer { withUnsafeBytes(of: trailer.littleEndian) { bytes += $0 } }
        return bytes + [UInt8](repeating: 0, count: 4096 - bytes.count)
    }

    private static func put<T: FixedWidthInteger>(_ v: T, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
    }

    private static func putString(_ s: String, at offset: Int, in bytes: inout [UInt8]) {
        for (i, b) in s.utf8.enumerated() { bytes[offset + i] = b }
    }

    /// A block_rq_complete payload in the layout of KernelTexts.rqCompleteFormat.
    static func rqComplete(dev: UInt32, sector: UInt64, sectors: UInt32, rwbs: String) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 48)
        put(UInt16(2107), at: 0, in: &p)
        put(dev, at: 8, in: &p)
        put(sector, at: 16, in: &p)
        put(sectors, at: 24, in: &p)
        putString(rwbs, at: 34, in: &p)
        put(UInt32(4 << 16 | 48), at: 44, in: &p)   // __data_loc cmd: empty string
        return p
    }

    /// A block_bio_complete payload in the layout of KernelTexts.bioCompleteFormat.
    static func bioComplete(dev: UInt32, sector: UInt64, sectors: UInt32, rwbs: String) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 44)
        put(UInt16(2100), at: 0, in: &p)
        put(dev, at: 8, in: &p)
        put(sector, at: 16, in: &p)
        put(sectors, at: 24, in: &p)
        putString(rwbs, at: 32, in: &p)
        return p
    }

    /// An ftrace print (trace_marker) payload.
    static func print(_ text: String) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 16)
        put(UInt16(5), at: 0, in: &p)
        p += Array(text.utf8) + [0]
        while p.count % 4 != 0 { p.append(0) }
        return p
    }
}

/// Texts as a 6.18 kernel prints them under /sys/kernel/tracing/events.
enum KernelTexts {
    static let headerPage = """
        \tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
        \tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
        \tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
        \tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;

        """

    static let headerEvent = """
        # compressed entry header
        \ttype_len    :    5 bits
        \ttime_delta  :   27 bits
        \tarray       :   32 bits

        \tpadding     : type == 29
        \ttime_extend : type == 30
        \ttime_stamp : type == 31
        \tdata max type_len  == 28

        """

    static let rqCompleteFormat = """
        name: block_rq_complete
        ID: 2107
        format:
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

        \tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
        \tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
        \tfield:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;
        \tfield:int error;\toffset:28;\tsize:4;\tsigned:1;
        \tfield:unsigned short ioprio;\toffset:32;\tsize:2;\tsigned:0;
        \tfield:char rwbs[10];\toffset:34;\tsize:10;\tsigned:0;
        \tfield:__data_loc char[] cmd;\toffset:44;\tsize:4;\tsigned:0;

        print fmt: "%d,%d %s (%s) %llu + %u", ((unsigned int) ((REC->dev) >> 20)), REC->rwbs

        """

    static let bioCompleteFormat = """
        name: block_bio_complete
        ID: 2100
        format:
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

        \tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
        \tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
        \tfield:unsigned nr_sector;\toffset:24;\tsize:4;\tsigned:0;
        \tfield:int error;\toffset:28;\tsize:4;\tsigned:1;
        \tfield:char rwbs[10];\toffset:32;\tsize:10;\tsigned:0;

        print fmt: "%d,%d %s %llu + %u [%d]", REC->rwbs

        """

    static let printFormat = """
        name: print
        ID: 5
        format:
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
        \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
        \tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

        \tfield:unsigned long ip;\toffset:8;\tsize:8;\tsigned:0;
        \tfield:char buf[];\toffset:16;\tsize:0;\tsigned:0;

        print fmt: "%ps: %s", (void *)REC->ip, REC->buf

        """
}
