/// The human-readable listing of `ringback devices`: one aligned row per
/// device, "-" where a device has no value, sizes in binary units.
public enum DeviceTable {
    /// The column headings, in order.
    public static let headings = ["NAME", "SIZE", "LOG-SEC", "PHY-SEC", "KIND", "LV", "LV-TYPE", "START",
                                  "FSTYPE", "LABEL", "UUID", "MOUNTPOINTS", "HOLDERS"]
    /// Columns holding numbers, aligned right.
    private static let rightAligned: Set<String> = ["SIZE", "LOG-SEC", "PHY-SEC", "START"]

    /// The devices `ringback devices` shows: all of them with `all`, otherwise
    /// all but unattached (size-0) loop devices.
    public static func visible(_ devices: [BlockDeviceInfo], all: Bool) -> [BlockDeviceInfo] {
        all ? devices : devices.filter { !$0.isUnattachedLoop }
    }

    /// The cells of one device's row, in `headings` order.
    public static func row(_ d: BlockDeviceInfo) -> [String] {
        func cell(_ s: String?) -> String { s.flatMap { $0.isEmpty ? nil : $0 } ?? "-" }
        let (lv, lvType) = logicalVolumeCells(d)
        return [d.name, humanSize(d.size), String(d.logicalSectorSize), String(d.physicalSectorSize),
                d.kind.rawValue, cell(lv), cell(lvType), cell(d.partition.map { String($0.start) }),
                cell(d.fsType), cell(d.fsLabel), cell(d.fsUUID),
                cell(d.mountpoints.joined(separator: ",")), cell(d.holders.joined(separator: ","))]
    }

    /// LV: "VG/LV" (a hidden LV in lvs's brackets, "vg0/[pool_tmeta]"); LV-TYPE:
    /// linear, striped, thin, snapshot, thin-pool or LVM's own name for others,
    /// and "[LAYER]" for an LV's internal devices (vg0-root-real: "[real]").
    /// Without lvs's report, the VG and LV come from the dm name and the type
    /// is unknown.
    static func logicalVolumeCells(_ d: BlockDeviceInfo) -> (String?, String?) {
        guard d.kind == .lvm else { return (nil, nil) }
        if let lv = d.logicalVolume {
            let type = lv.segmentType == .other ? lv.segmentTypeName : lv.segmentType.rawValue
            return ("\(lv.vg)/\(lv.name)", d.lvmLayer.map { "[\($0)]" } ?? type)
        }
        guard let split = d.dmName.flatMap(LVMName.splitMapperName) else { return (nil, nil) }
        return ("\(split.vg)/\(split.lv)", split.layer.map { "[\($0)]" })
    }

    /// The table with a heading line, columns separated by two spaces, no
    /// trailing blanks, ending in a newline.
    public static func render(_ devices: [BlockDeviceInfo]) -> String {
        let rows = [headings] + devices.map(row)
        var widths = [Int](repeating: 0, count: headings.count)
        for row in rows {
            for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) }
        }
        var out = ""
        for row in rows {
            var line = ""
            for (i, cell) in row.enumerated() {
                let pad = String(repeating: " ", count: widths[i] - cell.count)
                if i > 0 { line += "  " }
                line += rightAligned.contains(headings[i]) ? pad + cell : cell + pad
            }
            while line.last == " " { line.removeLast() }
            out += line + "\n"
        }
        return out
    }

    /// A size in binary units with one decimal, as lsblk prints them: "512B",
    /// "64.0M", "1.5G".
    public static func humanSize(_ bytes: UInt64) -> String {
        let units = ["B", "K", "M", "G", "T", "P", "E"]
        if bytes < 1024 { return "\(bytes)B" }
        var unit = 1
        while unit < units.count - 1 && bytes >= UInt64(1) << (10 * UInt64(unit + 1)) { unit += 1 }
        var tenths = (Double(bytes) / Double(UInt64(1) << (10 * UInt64(unit))) * 10).rounded()
        // 1023.96K rounds to 1024.0K: say 1.0M instead.
        if tenths >= 10240 && unit < units.count - 1 {
            unit += 1
            tenths = (tenths / 1024).rounded()
        }
        let whole = UInt64(tenths) / 10, fraction = UInt64(tenths) % 10
        return "\(whole).\(fraction)\(units[unit])"
    }
}
