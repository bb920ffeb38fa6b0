/// The layout of one trace event as its tracefs `format` file describes it:
/// the numeric `ID` that appears as `common_type` in every record, and each
/// field's offset and size in the record's payload.
///
/// Layouts are read at run time because they change between kernels (Linux
/// 6.x added `ioprio` to `block_rq_complete`, moving `rwbs`).
struct EventFormat: Equatable, Sendable {
    /// One `field:` line.
    struct Field: Equatable, Sendable {
        var offset: Int
        var size: Int
        var signed: Bool
    }

    var name: String
    var id: UInt16
    var fields: [String: Field]

    /// Parses the text of a `format` file; `path` names it in errors.
    init(parsing text: String, path: String) throws(TrackingError) {
        var name: String?
        var id: UInt16?
        var fields: [String: Field] = [:]
        for rawLine in text.split(separator: "\n") {
            let line = rawLine.drop { $0 == " " || $0 == "\t" }
            if line.hasPrefix("name:") {
                name = line.dropFirst(5).trimmingSpaces
            } else if line.hasPrefix("ID:") {
                guard let value = UInt16(line.dropFirst(3).trimmingSpaces) else {
                    throw .unsupportedFormat(path, "the ID line \"\(line)\" is not a 16-bit number")
                }
                id = value
            } else if line.hasPrefix("field:") {
                let (fieldName, field) = try EventFormat.parseField(line, path: path)
                fields[fieldName] = field
            }
        }
        guard let name, let id else { throw .unsupportedFormat(path, "it has no name or no ID line") }
        self.name = name
        self.id = id
        self.fields = fields
    }

    /// Parses `field:unsigned int nr_sector;\toffset:24;\tsize:4;\tsigned:0;`
    /// (also the `field: u64 timestamp;` lines of `events/header_page`). The
    /// name is the last word of the declaration, without an array suffix.
    static func parseField(_ line: Substring, path: String) throws(TrackingError) -> (String, Field) {
        var declaration: String?
        var attributes: [String: String] = [:]
        for part in line.split(separator: ";") {
            let item = part.trimmingSpaces
            guard let colon = item.firstIndex(of: ":") else { continue }
            let key = String(item[..<colon]), value = item[item.index(after: colon)...].trimmingSpaces
            if key == "field" { declaration = value } else { attributes[key] = value }
        }
        guard let declaration,
              let last = declaration.split(whereSeparator: { $0 == " " || $0 == "\t" }).last,
              let offset = attributes["offset"].flatMap({ Int($0) }),
              let size = attributes["size"].flatMap({ Int($0) })
        else { throw .unsupportedFormat(path, "cannot read the field line \"\(line)\"") }
        let name = last.prefix { $0 != "[" }
        return (String(name), Field(offset: offset, size: size, signed: attributes["signed"] == "1"))
    }

    /// The field `name`, which must exist with one of `sizes`.
    func field(_ fieldName: String, sizes: Set<Int>, path: String) throws(TrackingError) -> Field {
        guard let field = fields[fieldName] else {
            throw .unsupportedFormat(path, "event \(name) has no field \(fieldName)")
        }
        guard sizes.contains(field.size) else {
            throw .unsupportedFormat(path, "field \(fieldName) of \(name) has size \(field.size), expected one of \(sizes.sorted())")
        }
        return field
    }
}

/// Where a ring-buffer page keeps its time stamp, its commit word and its
/// data, from `events/header_page`:
///
///     field: u64 timestamp;	offset:0;	size:8;	signed:0;
///     field: local_t commit;	offset:8;	size:8;	signed:1;
///     field: char data;	offset:16;	size:4080;	signed:0;
///
/// (struct buffer_data_page in kernel/trace/ring_buffer.c). The commit word's
/// low bits are the number of data bytes on the page; bit 31
/// (RB_MISSED_EVENTS) says events were lost before this page and bit 30
/// (RB_MISSED_STORED) that their count follows the data.
struct PageHeaderLayout: Equatable, Sendable {
    var timestamp: EventFormat.Field
    var commit: EventFormat.Field
    var dataOffset: Int

    /// x86-64 and every other 64-bit kernel.
    static let lp64 = PageHeaderLayout(timestamp: .init(offset: 0, size: 8, signed: false),
                                       commit: .init(offset: 8, size: 8, signed: true), dataOffset: 16)

    init(timestamp: EventFormat.Field, commit: EventFormat.Field, dataOffset: Int) {
        self.timestamp = timestamp
        self.commit = commit
        self.dataOffset = dataOffset
    }

    init(parsing text: String, path: String) throws(TrackingError) {
        var fields: [String: EventFormat.Field] = [:]
        for rawLine in text.split(separator: "\n") {
            let line = rawLine.drop { $0 == " " || $0 == "\t" }
            guard line.hasPrefix("field:") else { continue }
            let (name, field) = try EventFormat.parseField(line, path: path)
            // `int overwrite` shares the commit word's first byte; the first
            // declaration of an offset is the one that counts.
            if fields[name] == nil { fields[name] = field }
        }
        guard let timestamp = fields["timestamp"], timestamp.size == 8,
              let commit = fields["commit"], commit.size == 4 || commit.size == 8,
              let data = fields["data"], data.offset >= commit.offset + commit.size
        else { throw .unsupportedFormat(path, "expected u64 timestamp, a 4- or 8-byte commit and then data") }
        self.init(timestamp: timestamp, commit: commit, dataOffset: data.offset)
    }
}

/// The record header types of `events/header_event` (include/linux/ring_buffer.h,
/// enum ring_buffer_type): a 32-bit word with type_len in the low 5 bits and
/// time_delta in the high 27.
struct RecordHeaderLayout: Equatable, Sendable {
    var padding: UInt32 = 29
    var timeExtend: UInt32 = 30
    var timeStamp: UInt32 = 31
    var dataMaxTypeLen: UInt32 = 28

    /// Checks that the kernel describes the header this parser knows; any
    /// other layout is refused rather than misread.
    init(parsing text: String, path: String) throws(TrackingError) {
        func number(after key: String) -> UInt32? {
            guard let line = text.split(separator: "\n").first(where: { $0.contains(key) }),
                  let eq = line.range(of: "==") else { return nil }
            return UInt32(line[eq.upperBound...].trimmingSpaces)
        }
        let bitsLine = { (key: String) in text.split(separator: "\n").first { $0.contains(key) }.map { $0.filter { !$0.isWhitespace } } }
        guard bitsLine("type_len") == "type_len:5bits", bitsLine("time_delta") == "time_delta:27bits" else {
            throw .unsupportedFormat(path, "expected a 5-bit type_len and a 27-bit time_delta")
        }
        guard let padding = number(after: "padding"), let extend = number(after: "time_extend"),
              let maxData = number(after: "data max type_len")
        else { throw .unsupportedFormat(path, "the padding, time_extend or data max type_len line is missing") }
        self.padding = padding
        self.timeExtend = extend
        // Kernels before 5.7 had no absolute time-stamp line; 31 is then unused.
        self.timeStamp = number(after: "time_stamp") ?? 31
        self.dataMaxTypeLen = maxData
        guard Set([padding, extend, timeStamp]).count == 3, maxData < padding, timeStamp < 32 else {
            throw .unsupportedFormat(path, "record types padding=\(padding) time_extend=\(extend) time_stamp=\(timeStamp) data max=\(maxData) overlap")
        }
    }

    init() {}
}

extension StringProtocol {
    /// Without leading and trailing spaces and tabs.
    var trimmingSpaces: String {
        let s = drop { $0 == " " || $0 == "\t" }
        return String(s.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
