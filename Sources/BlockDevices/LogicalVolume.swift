import Foundation

/// An LVM logical volume as `lvs` reports it, with the device node ringback
/// reads it through.
public struct LogicalVolume: Codable, Hashable, Sendable {
    /// What kind of LV it is, as far as backups care.
    public enum SegmentType: String, Codable, Sendable {
        /// A plain LV on physical extents (LVM's "linear", also the origin of
        /// classic snapshots).
        case linear
        /// An LV striped over several PVs.
        case striped
        /// A thin LV in a thin pool (thin snapshots are thin LVs with an origin).
        case thin
        /// A classic copy-on-write snapshot (LVM reports its segment type as
        /// "linear"; the `s` in lv_attr says what it is).
        case snapshot
        /// A thin pool.
        case thinPool = "thin-pool"
        /// Anything else (mirror, raid1, cache, vdo...): named by `segmentTypeName`.
        case other
    }

    /// The volume group's name.
    public var vg: String
    /// The LV's name; hidden LVs keep the brackets lvs shows ("[pool_tmeta]").
    public var name: String
    /// What the LV is.
    public var segmentType: SegmentType
    /// LVM's own segment type name ("linear", "thin", "thin-pool", "raid1"...).
    public var segmentTypeName: String
    /// Size in bytes of the device ringback reads: for a classic snapshot,
    /// its origin's size (its `lv_size` is the copy-on-write space, `cowSize`).
    public var size: UInt64
    /// For a classic snapshot: the bytes of its copy-on-write exception store.
    public var cowSize: UInt64?
    /// The thin pool of a thin LV ("pool", in the same VG).
    public var pool: String?
    /// The origin of a snapshot (classic or thin), in the same VG.
    public var origin: String?
    /// The device-mapper node LVM names for it: /dev/mapper/VG-LV.
    public var dmPath: String
    /// lv_attr, the ten characters of lvs(8) ("-wi-a-----").
    public var attributes: String
    /// The thin device id of a thin LV in its pool's metadata (what thin_delta takes).
    public var thinID: Int?
    /// The LV's UUID (with LVM's dashes).
    public var uuid: String
    /// The VG's UUID (with LVM's dashes).
    public var vgUUID: String
    /// The dm device's number while the LV is active (lv_kernel_major/minor).
    public var kernelDevice: DeviceNumber?
    /// For snapshots and thin pools: how full, in percent (lvs data_percent).
    public var dataPercent: Double?

    /// "VG/LV", LVM's own name for it (hidden LVs without their brackets).
    public var fullName: String { "\(vg)/\(unbracketedName)" }

    /// The name without the brackets of a hidden LV.
    public var unbracketedName: String {
        name.hasPrefix("[") && name.hasSuffix("]") ? String(name.dropFirst().dropLast()) : name
    }

    /// Whether LVM hides it (thin pool data and metadata, the pool's spare...).
    public var isHidden: Bool { name.hasPrefix("[") }

    /// The fifth character of lv_attr is the state: `a` active (lvs(8)).
    public var isActive: Bool { attribute(4) == "a" }

    /// The tenth character of lv_attr: `k`, activation is skipped unless
    /// asked for with -K (thin snapshots get it by default).
    public var skipsActivation: Bool { attribute(9) == "k" }

    /// A classic snapshot whose copy-on-write space overflowed (state `I`
    /// or `S`): its content is gone.
    public var isInvalidSnapshot: Bool { segmentType == .snapshot && (attribute(4) == "I" || attribute(4) == "S") }

    /// The device-mapper UUID of the LV's device: "LVM-" and the two UUIDs
    /// without their dashes (lib/activate/dev_manager.c); internal devices
    /// add "-LAYER".
    public var dmUUID: String {
        "LVM-" + vgUUID.replacingOccurrences(of: "-", with: "") + uuid.replacingOccurrences(of: "-", with: "")
    }

    func attribute(_ index: Int) -> Character? {
        guard index < attributes.count else { return nil }
        return attributes[attributes.index(attributes.startIndex, offsetBy: index)]
    }

    public init(vg: String, name: String, segmentType: SegmentType, segmentTypeName: String, size: UInt64,
                cowSize: UInt64? = nil, pool: String? = nil, origin: String? = nil, dmPath: String,
                attributes: String, thinID: Int? = nil, uuid: String, vgUUID: String,
                kernelDevice: DeviceNumber? = nil, dataPercent: Double? = nil) {
        self.vg = vg
        self.name = name
        self.segmentType = segmentType
        self.segmentTypeName = segmentTypeName
        self.size = size
        self.cowSize = cowSize
        self.pool = pool
        self.origin = origin
        self.dmPath = dmPath
        self.attributes = attributes
        self.thinID = thinID
        self.uuid = uuid
        self.vgUUID = vgUUID
        self.kernelDevice = kernelDevice
        self.dataPercent = dataPercent
    }
}

extension DeviceNumber: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let n = DeviceNumber(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "expected MAJOR:MINOR, found \"\(text)\""))
        }
        self = n
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}

/// The JSON report of `lvs --reportformat json --units b --nosuffix -o
/// LVSReport.fields`, turned into `LogicalVolume`s.
public enum LVSReport {
    /// The fields ringback asks lvs for.
    public static let fields = [
        "lv_name", "vg_name", "lv_uuid", "vg_uuid", "lv_size", "origin_size", "segtype", "pool_lv", "origin",
        "lv_dm_path", "lv_attr", "thin_id", "lv_kernel_major", "lv_kernel_minor", "data_percent",
    ]

    /// lvs's arguments before the LV names: JSON, sizes in bytes without a unit.
    public static let arguments = ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", fields.joined(separator: ",")]

    /// Every field is a string in lvs's JSON, empty when it does not apply.
    private struct Row: Decodable {
        let lv_name, vg_name, lv_uuid, vg_uuid, lv_size, origin_size, segtype, pool_lv, origin: String
        let lv_dm_path, lv_attr, thin_id, lv_kernel_major, lv_kernel_minor, data_percent: String
    }

    private struct Document: Decodable {
        struct Section: Decodable { let lv: [Row]? }
        let report: [Section]
    }

    /// Parses lvs's output. Throws `LVMError` (`.unparsable`) naming the
    /// field that does not have the form lvs documents.
    public static func parse(_ json: String) throws -> [LogicalVolume] {
        let document: Document
        do {
            document = try JSONDecoder().decode(Document.self, from: Data(json.utf8))
        } catch {
            throw LVMError.unparsable("the report is not the JSON lvs --reportformat json prints (\(Self.describe(error)))")
        }
        return try document.report.flatMap { $0.lv ?? [] }.map(volume)
    }

    private static func volume(_ r: Row) throws -> LogicalVolume {
        func bytes(_ field: String, _ text: String) throws -> UInt64 {
            guard let n = UInt64(text) else {
                throw LVMError.unparsable("\(field) of \(r.vg_name)/\(r.lv_name) is \"\(text)\", not a number of bytes")
            }
            return n
        }
        func optional(_ s: String) -> String? { s.isEmpty ? nil : s }

        let lvSize = try bytes("lv_size", r.lv_size)
        let isClassicSnapshot = r.lv_attr.first == "s" || r.lv_attr.first == "S"
        let type: LogicalVolume.SegmentType
        switch r.segtype {
        case _ where isClassicSnapshot: type = .snapshot
        case "linear": type = .linear
        case "striped": type = .striped
        case "thin": type = .thin
        case "thin-pool": type = .thinPool
        default: type = .other
        }
        var kernel: DeviceNumber?
        if let major = UInt32(r.lv_kernel_major), let minor = UInt32(r.lv_kernel_minor) {
            kernel = DeviceNumber(major: major, minor: minor)
        }
        var thinID: Int?
        if !r.thin_id.isEmpty {
            guard let id = Int(r.thin_id) else {
                throw LVMError.unparsable("thin_id of \(r.vg_name)/\(r.lv_name) is \"\(r.thin_id)\", not a number")
            }
            thinID = id
        }
        return LogicalVolume(
            vg: r.vg_name, name: r.lv_name, segmentType: type, segmentTypeName: r.segtype,
            size: isClassicSnapshot ? try bytes("origin_size", r.origin_size) : lvSize,
            cowSize: isClassicSnapshot ? lvSize : nil,
            pool: optional(r.pool_lv), origin: optional(r.origin), dmPath: r.lv_dm_path, attributes: r.lv_attr,
            thinID: thinID, uuid: r.lv_uuid, vgUUID: r.vg_uuid, kernelDevice: kernel,
            dataPercent: Double(r.data_percent))
    }

    /// A decoding error in words (which key or value), not a type dump.
    private static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "no field \(key.stringValue)"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "unexpected value at \(c.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted(let c): return c.debugDescription
        default: return "\(error)"
        }
    }
}
