import BlockDevices
import ControlProtocol
import Foundation

/// The LVM command-line tools as ringbackd's snapshots use them (DESIGN §5):
/// `lvcreate --snapshot` and `lvremove`, `vgs` for free space, and `dmsetup
/// message` with `thin_delta` for the changes between two thin snapshots.
/// What a volume is comes from BlockDevices' `LVM` (`lvs --reportformat json`).
enum LVMTools {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs an LVM tool and returns its standard output; a failure carries
    /// the command line and what the tool said.
    @discardableResult
    static func run(_ tool: String, _ arguments: [String]) throws -> String {
        let candidates = ["/usr/sbin/\(tool)", "/sbin/\(tool)", "/usr/bin/\(tool)"]
        guard let executable = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw Failure(description: "\(tool) is not installed (the LVM tools: Debian packages lvm2 and thin-provisioning-tools)")
        }
        let r: BlockDevices.LVM.ToolResult
        do { r = try BlockDevices.LVM.runTool(executable, arguments, timeout: 300) } catch {
            throw Failure(description: "cannot run \(executable): \(error)")
        }
        guard r.status == 0, !r.timedOut else {
            let said = r.stderr.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.joined(separator: "; ")
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) "
                + (r.timedOut ? "did not finish within 300 s" : "failed (exit \(r.status))") + (said.isEmpty ? "" : ": \(said)"))
        }
        return r.stdout
    }

    /// The volume `name` names (`VG/LV` or a node of it), as lvs reports it.
    static func volume(_ name: String) throws -> LogicalVolume {
        guard let v = try BlockDevices.LVM().volume(named: name) else {
            throw Failure(description: "\(name) is not an LVM logical volume")
        }
        return v
    }

    /// Whether a volume of that name exists in the VG.
    static func exists(_ vg: String, _ lv: String) -> Bool {
        (try? BlockDevices.LVM().volume(vg: vg, lv: lv)) != nil
    }

    /// The device-mapper name: dashes inside names are doubled.
    static func mapperName(_ vg: String, _ lv: String) -> String {
        vg.replacingOccurrences(of: "-", with: "--") + "-" + lv.replacingOccurrences(of: "-", with: "--")
    }

    /// Bytes free in a volume group.
    static func freeBytes(vg: String) throws -> UInt64 {
        let text = try run("vgs", ["--reportformat", "json", "--units", "b", "--nosuffix", "-o", "vg_free", vg])
        guard let data = text.data(using: .utf8),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let report = (json["report"] as? [[String: Any]])?.first,
              let row = (report["vg"] as? [[String: String]])?.first, let free = row["vg_free"].flatMap({ UInt64($0) })
        else { throw Failure(description: "cannot read the free space of volume group \(vg) from vgs") }
        return free
    }

    // MARK: thin-delta

    /// The byte ranges that differ between two thin volumes of one pool
    /// (`thin_delta` on a reserved metadata snapshot of the live pool).
    static func thinDelta(pool vg: String, _ pool: String, from oldID: Int, to newID: Int) throws -> [(offset: UInt64, length: UInt64)] {
        let tpool = "/dev/mapper/" + mapperName(vg, pool) + "-tpool"
        let tmeta = "/dev/mapper/" + mapperName(vg, pool + "_tmeta")
        try run("dmsetup", ["message", tpool, "0", "reserve_metadata_snap"])
        defer { _ = try? run("dmsetup", ["message", tpool, "0", "release_metadata_snap"]) }
        let xml = try run("thin_delta", ["-m", "--snap1", String(oldID), "--snap2", String(newID), tmeta])
        return try parseThinDelta(xml)
    }

    /// Parses `thin_delta`'s XML: the superblock's `data_block_size` (in
    /// 512-byte sectors) gives the unit of every `begin`/`length`; `different`,
    /// `left_only` and `right_only` ranges changed, `same` ones did not.
    static func parseThinDelta(_ xml: String) throws -> [(offset: UInt64, length: UInt64)] {
        func attribute(_ name: String, in line: Substring) -> UInt64? {
            guard let r = line.range(of: " \(name)=\"") else { return nil }
            return UInt64(line[r.upperBound...].prefix { $0 != "\"" })
        }
        var blockBytes: UInt64?
        var ranges: [(offset: UInt64, length: UInt64)] = []
        for raw in xml.split(separator: "\n") {
            let line = raw.drop { $0 == " " || $0 == "\t" }
            if line.hasPrefix("<superblock") {
                guard let sectors = attribute("data_block_size", in: line), sectors > 0 else {
                    throw Failure(description: "thin_delta's superblock line has no data_block_size: \(line)")
                }
                blockBytes = sectors * 512
            } else if line.hasPrefix("<different") || line.hasPrefix("<left_only") || line.hasPrefix("<right_only") {
                guard let unit = blockBytes else { throw Failure(description: "thin_delta printed a range before its superblock") }
                guard let begin = attribute("begin", in: line), let length = attribute("length", in: line) else {
                    throw Failure(description: "cannot parse thin_delta's line: \(line)")
                }
                ranges.append((begin * unit, length * unit))
            }
        }
        guard blockBytes != nil else { throw Failure(description: "thin_delta printed no superblock") }
        return ranges
    }
}
