import BlockDevices
import BlockIO
import DirtyBitmaps
import Foundation
import WriteTracking

/// A tracked device as the daemon holds it: its identity, its bitmaps, and
/// the tracker that feeds them.
///
/// A class, guarded by the daemon's lock: the tracker marks every completed
/// write in `bitmaps`, and a struct in the daemon's dictionary was copied out
/// and back on each of those marks (a profile of 130k writes/s showed the copy
/// and its allocations as the reader's main cost).
final class Node {
    /// The path the device is known by (resolved, e.g. /dev/loop3).
    let path: String
    let size: UInt64
    let identity: DeviceIdentity
    /// The whole disk whose tracefs instance reports this device's writes.
    let disk: String
    let tracked: TrackedDevice
    var bitmaps: BitmapSet
    /// Private write records of converging jobs, marked with the bitmaps.
    var recorders: [WriteRecorder] = []
    /// Writes, discards and write-zeroes the tracker reported (a metric).
    var writeEvents: UInt64 = 0

    init(path: String, size: UInt64, identity: DeviceIdentity, disk: String, tracked: TrackedDevice, bitmaps: BitmapSet) {
        self.path = path
        self.size = size
        self.identity = identity
        self.disk = disk
        self.tracked = tracked
        self.bitmaps = bitmaps
    }

    /// The identity a persistent bitmap is bound to (DESIGN §5): whole-disk
    /// dev_t, partition start, size, file-system UUID, and a serial — for a
    /// loop device its backing file and inode, so that another file attached
    /// at the same loop number is another device.
    static func identity(of info: BlockDeviceInfo, disk: BlockDeviceInfo) -> DeviceIdentity {
        let dev = UInt64(disk.major) << 8 & 0xfff00 | UInt64(disk.minor) & 0xff
            | (UInt64(disk.minor) & ~0xff) << 12 | (UInt64(disk.major) & ~0xfff) << 32
        var serial: String?
        if let backing = disk.loopBackingFile {
            var st = stat()
            let inode = stat(backing, &st) == 0 ? "\(st.st_dev):\(st.st_ino)" : "?"
            serial = "loop:\(backing):\(inode)"
        } else {
            for file in ["device/wwid", "device/serial", "wwid", "dm/uuid"] {
                if let s = try? String(contentsOfFile: "/sys/class/block/\(disk.name)/\(file)", encoding: .utf8) {
                    serial = s.trimmingCharacters(in: .whitespacesAndNewlines)
                    break
                }
            }
        }
        return DeviceIdentity(wholeDisk: dev, partitionStart: info.partition?.start ?? 0, size: info.size,
                              filesystemUUID: info.fsUUID, serial: serial)
    }
}

/// Files of the daemon's state directory.
struct StateFiles {
    let root: String
    var bitmaps: String { root + "/bitmaps" }
    var tracked: String { root + "/tracked.json" }

    /// The file of a persistent bitmap: device path and name, escaped.
    func bitmapFile(node: String, name: String) -> String {
        func escape(_ s: String) -> String {
            s.unicodeScalars.map { c in
                CharacterSet.alphanumerics.contains(c) || c == "-" || c == "." ? String(c) : String(format: "%%%02X", c.value)
            }.joined()
        }
        var file = escape(node) + "@" + escape(name)
        // A long name would pass NAME_MAX (255): keep a readable start and a
        // digest of the rest. The loader reads the name from the file itself.
        if file.utf8.count > 200 {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a
            for b in file.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            file = String(file.prefix(160)) + "~" + String(h, radix: 16)
        }
        return bitmaps + "/" + file + ".bitmap"
    }

    /// What survives a restart besides the bitmap files: which devices are
    /// tracked, and each disk's tracefs loss counter at the last barrier.
    struct Tracked: Codable {
        var nodes: [String]
        var lossCounts: [String: UInt64]
    }

    func loadTracked() -> Tracked {
        guard let data = FileManager.default.contents(atPath: tracked),
              let t = try? JSONDecoder().decode(Tracked.self, from: data) else { return Tracked(nodes: [], lossCounts: [:]) }
        return t
    }

    func saveTracked(_ t: Tracked) throws {
        let data = try JSONEncoder().encode(t)
        let tmp = tracked + ".tmp"
        try data.write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, tracked) == 0 else { throw SystemError(errno: errno, "rename \(tmp) to \(tracked)") }
    }
}

/// The boot id, which tells a reboot (and the writes no daemon saw) apart.
func currentBootID(from path: String) -> String {
    ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "unknown").trimmingCharacters(in: .whitespacesAndNewlines)
}

/// The writes a converging job has not copied yet: marked by the tracker like
/// a bitmap, taken (and emptied) by the job before each pass.
final class WriteRecorder {
    var bitmap: DirtyBitmap
    init(deviceSize: UInt64, granularity: UInt64) {
        // The name is never shown; the granularity is the image's cluster size.
        bitmap = try! DirtyBitmap(name: "converge", deviceSize: deviceSize, granularity: granularity)
    }
}
