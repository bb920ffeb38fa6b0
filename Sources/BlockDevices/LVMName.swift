/// The ways to name an LVM logical volume, and how device-mapper names encode
/// them. Pure string work: whether a name is an LV is decided with the kernel
/// and `lvs` (`LVM`), these only say what a name would mean.
public enum LVMName {
    /// "VG/LV" → ("VG", "LV"): a relative name with exactly one slash whose two
    /// parts are valid LVM names. A path that starts with "/" or "." is not.
    public static func volumeGroupAndVolume(_ name: String) -> (vg: String, lv: String)? {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !name.hasPrefix("."), isValid(parts[0]), isValid(parts[1]) else { return nil }
        return (String(parts[0]), String(parts[1]))
    }

    /// "/dev/VG/LV" → ("VG", "LV"): the links LVM (or udev) makes under /dev.
    /// /dev/mapper/NAME is not one of them (see `splitMapperName`).
    public static func devPath(_ path: String) -> (vg: String, lv: String)? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0].isEmpty, parts[1] == "dev", parts[2] != "mapper",
              isValid(parts[2]), isValid(parts[3]) else { return nil }
        return (String(parts[2]), String(parts[3]))
    }

    /// The device-mapper name LVM gives an LV's device: the VG and LV names
    /// joined by "-", each with its own dashes doubled ("my-vg", "data-lv" →
    /// "my--vg-data--lv"), and "-LAYER" appended for the internal devices
    /// ("vg0-root-real", "vg0-pool-tpool"). libdm's dm_build_dm_name.
    public static func mapperName(vg: String, lv: String, layer: String? = nil) -> String {
        let escape = { (s: String) in s.replacingOccurrences(of: "-", with: "--") }
        return escape(vg) + "-" + escape(lv) + (layer.map { "-" + $0 } ?? "")
    }

    /// The inverse of `mapperName`: a single dash separates VG, LV and layer,
    /// a double dash is a dash of a name (libdm's dm_split_lvm_name). Nil
    /// when the name has no single dash (not an LVM name), or when one of
    /// its parts is empty.
    public static func splitMapperName(_ name: String) -> (vg: String, lv: String, layer: String?)? {
        var parts: [String] = [""]
        var chars = name[...]
        while let c = chars.first {
            chars = chars.dropFirst()
            if c == "-" {
                if chars.first == "-" {
                    parts[parts.count - 1].append("-")
                    chars = chars.dropFirst()
                } else {
                    parts.append("")
                }
            } else {
                parts[parts.count - 1].append(c)
            }
        }
        guard parts.count == 2 || parts.count == 3, !parts.contains(where: \.isEmpty) else { return nil }
        return (parts[0], parts[1], parts.count == 3 ? parts[2] : nil)
    }

    /// A VG or LV name LVM accepts: letters, digits and "+_.-", not starting
    /// with "-", not "." or ".." (lvm(8), VALID NAMES).
    public static func isValid(_ name: some StringProtocol) -> Bool {
        guard !name.isEmpty, name.count <= 127, name != ".", name != "..", name.first != "-" else { return false }
        return name.unicodeScalars.allSatisfy { s in
            s.isASCII && (("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s) || "+_.-".unicodeScalars.contains(s))
        }
    }
}
